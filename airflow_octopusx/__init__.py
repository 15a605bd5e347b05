"""Apache Airflow provider for the OctopusX video-generation API.

Kept free of Airflow imports: DAG parsing and the simulator's pytest plugin import this package often.
"""

__version__ = "0.1.0"
