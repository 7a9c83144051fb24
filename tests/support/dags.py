"""The project's DAGs, loaded as the DAG processor loads them."""

from __future__ import annotations

from pathlib import Path

DAGS = Path(__file__).resolve().parents[2] / "dags"


def load_dag(dag_id: str):  # noqa: ANN201 - an airflow DAG (imported lazily: the airflow_db fixture configures Airflow first)
    """``citibikes_<name>`` from ``dags/<name>.py``, which must import without errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{dag_id.removeprefix('citibikes_')}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]
