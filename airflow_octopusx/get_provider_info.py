"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``).

The connection form is declared here (``conn-fields`` / ``ui-field-behaviour``) rather than in hook
methods, so the UI can draw it without importing the hook.
"""

from __future__ import annotations

from typing import Any

from airflow_octopusx import __version__


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow: its connection type, hook, operators, sensor, triggers and links."""
    return {
        "package-name": "airflow-provider-octopusx",
        "name": "OctopusX",
        "description": "Generate videos with the OctopusX API (omni-fast) from Airflow DAGs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "OctopusX",
                "external-doc-url": "https://octopusx.ai",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "OctopusX", "python-modules": ["airflow_octopusx.hooks.octopusx"]}],
        "operators": [
            {
                "integration-name": "OctopusX",
                "python-modules": ["airflow_octopusx.operators.octopusx", "airflow_octopusx.operators.batch"],
            }
        ],
        "sensors": [
            {"integration-name": "OctopusX", "python-modules": ["airflow_octopusx.sensors.octopusx"]}
        ],
        "triggers": [
            {
                "integration-name": "OctopusX",
                "python-modules": ["airflow_octopusx.triggers.octopusx", "airflow_octopusx.triggers.batch"],
            }
        ],
        "config": {
            "octopusx": {
                "description": "Settings of the OctopusX provider that apply to the whole deployment.",
                "options": {
                    "allowed_input_folders": {
                        "description": "Comma-separated folders of the workers from which images and "
                        "reference videos given as local paths may be read. Empty: any regular file the "
                        "worker can read. Set it when prompts or paths come from run conf or other "
                        "untrusted input.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/data/frames,/opt/airflow/images",
                        "default": "",
                    }
                },
            }
        },
        "extra-links": ["airflow_octopusx.operators.octopusx.OctopusXVideoLink"],
        "connection-types": [
            {
                "connection-type": "octopusx",
                "hook-class-name": "airflow_octopusx.hooks.octopusx.OctopusXHook",
                "hook-name": "OctopusX",
                "ui-field-behaviour": {
                    # Port stays visible: a hidden port is sent as 0 by the UI's Test button, which
                    # Airflow then refuses as differing from the stored (empty) port.
                    "hidden-fields": ["login", "schema"],
                    "relabeling": {
                        "host": "Base URL",
                        "password": "API key",
                        "port": "Port (the Test button needs it)",
                    },
                    "placeholders": {
                        "host": "https://octopusx.ai",
                        "password": "sk-...",
                        "port": "443 for https:// (needed by the Test button only)",
                    },
                },
                "conn-fields": {
                    "allow_private_links": {
                        "label": "Follow video links to private addresses",
                        "schema": {"type": ["boolean", "null"], "default": False},
                        "description": "Let video links and redirects reach loopback, private or "
                        "link-local addresses; only for a CDN inside your own network.",
                    },
                    "allow_insecure_http": {
                        "label": "Allow plain http:// to a non-loopback host",
                        "schema": {"type": ["boolean", "null"], "default": False},
                        "description": "Only on a trusted private network: the key travels unencrypted.",
                    },
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                        "description": "For each HTTP connect, read and write; empty means 30.",
                    },
                    "max_attempts": {
                        "label": "Attempts per request",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                        "description": "Tries of a call that fails in a retryable way; empty means 5.",
                    },
                },
            }
        ],
    }
