"""anomalens: find anomalies in video and images and explain them with verified evidence."""
__version__ = "0.1.0"
