"""Online scoring of realised forecasts and calibration."""
