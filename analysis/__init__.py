"""Figures and tables of the SiD paper from Parquet results (each module is also a script)."""
