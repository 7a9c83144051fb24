"""The live dashboard's data: what the page shows, assembled from the live state store and the lake (no Airflow
here; the plugin in ``plugins/citibikes_airflow/dashboard`` serves it)."""
