"""Airflow glue for citibikes: hooks that turn Airflow connections into the clients the pipeline needs.

The pipeline itself (``include/citibikes``) never imports Airflow; these hooks read the
``kafka_default`` and ``citibikes_lake`` connections and hand ready clients to it, the way the
Apache Airflow providers separate hooks from business logic.
"""
