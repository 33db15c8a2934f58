"""An example FastAPI app whose scheduled job runs on exactly one replica, fenced by its term."""
