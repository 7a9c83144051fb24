"""The live dashboard: a FastAPI app mounted in Airflow's API server, behind Airflow's login."""

URL_PREFIX = "/citibikes"
"""Where the plugin mounts the dashboard in Airflow's API server."""
