"""The forecasting loop and the horizon calendars."""
