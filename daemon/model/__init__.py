"""Building, vetting and hot-swapping the served model."""
