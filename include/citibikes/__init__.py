"""citibikes: a real-time bike-share (GBFS) pipeline.

Plain Python with no Airflow imports: the DAGs in ``dags/``, the ``citibikes`` command and the tests
all call into this package, so there is one pipeline, not three.
"""

__version__ = "0.1.0"
