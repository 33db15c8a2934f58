"""An example FastAPI app whose scheduled jobs run once per tick, on one replica."""
