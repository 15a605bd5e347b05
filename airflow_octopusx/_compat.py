"""What differs between the Airflow versions (3.1.1 to 3.3) and settings the provider supports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import conf

if TYPE_CHECKING:
    from airflow.sdk import Context

#: How the UI labels a mapped task unless the DAG gives its own ``map_index_template``: by its prompt. A
#: default in ``__init__``'s signature, which is where ``.partial()`` looks for an operator's defaults.
DEFAULT_MAP_INDEX_TEMPLATE = "{{ task.map_index_label }}"


def label_if_mapped(context: Context) -> None:
    """Label a mapped task by its prompt where ``.partial()`` did not take the default (Airflow < 3.3).

    Airflow renders the label from the context as the try ends; a DAG's own template is left alone.
    """
    map_index = context["ti"].map_index
    if map_index is not None and map_index >= 0 and context.get("map_index_template") is None:
        context["map_index_template"] = DEFAULT_MAP_INDEX_TEMPLATE


def hook_lineage_is_read() -> bool:
    """Whether a hook-lineage reader (OpenLineage, say) is registered to take what a task records.

    Without one, Airflow 3.3's collector drops everything, yet building it imports every provider's
    asset factories (boto3, with the Amazon provider): 0.4 s of CPU in each task run that stores a video.
    Older Airflow decides inside its collector.
    """
    try:
        from airflow.sdk.plugins_manager import get_hook_lineage_readers_plugins
    except ImportError:
        return True
    return bool(get_hook_lineage_readers_plugins())


def airflow_clears_state_on_success() -> bool:
    """Whether Airflow deletes a task's state store in the call that records its success (3.3's
    ``[state_store] clear_on_success``): then a task leaves its records for Airflow to delete, so that a
    success report lost on its way finds them, and the retry pays for nothing."""
    return bool(conf.getboolean("state_store", "clear_on_success", fallback=False))
