"""The Parquet archiver and CSV import."""
