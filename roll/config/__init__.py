"""Job configuration: pydantic sections, YAML loading with overrides, the pipeline registry."""

from roll.config.base import ConfigBase
from roll.config.loader import LoadedJob, apply_overrides, dump_yaml, load_job, load_job_data
from roll.config.registry import get_pipeline, list_pipelines, register_pipeline

__all__ = [
    "ConfigBase",
    "LoadedJob",
    "apply_overrides",
    "dump_yaml",
    "get_pipeline",
    "list_pipelines",
    "load_job",
    "load_job_data",
    "register_pipeline",
]
