"""The local stack without Docker: Kafka broker, replay feed, S3 server and Airflow as pid-file services."""
