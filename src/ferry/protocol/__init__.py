"""The API contract shared by ferryd, the clients and the CLI (SPEC §5-§7), one namespace
over three tables: ``contract.py`` (paths, settable properties, actions, interfaces, file
fields), ``schemas.py`` (the JSON objects) and ``routes.py`` (the operations).
``openapi.py`` renders it as the OpenAPI document ferryd serves; ``views.py`` renders jobs
and files as the JSON objects the schemas describe."""

from .contract import (
    ACTION_BY_NAME,
    ACTIONS,
    API_PREFIX,
    API_VERSION,
    EVENT_TYPES,
    FILE_FIELD_NAMES,
    FILE_FIELDS,
    INTERFACES,
    MAX_HANDLE_TTL,
    PROPERTIES,
    PROPERTY_BY_NAME,
    REQUIRED_FILE_FIELDS,
    SETTABLE_PROPERTIES,
    SYSTEM_SOCKET,
    SYSTEM_STATE_DIR,
    Action,
    CliOption,
    FileField,
    Property,
    default_socket,
    default_state_dir,
)
from .routes import ROUTE_BY_NAME, ROUTES, BodyField, Route, json_type_matches
from .schemas import FILE_SCHEMA, JOB_SCHEMA, SCHEMAS

__all__ = [
    "ACTIONS",
    "ACTION_BY_NAME",
    "API_PREFIX",
    "API_VERSION",
    "EVENT_TYPES",
    "FILE_FIELDS",
    "FILE_FIELD_NAMES",
    "FILE_SCHEMA",
    "INTERFACES",
    "JOB_SCHEMA",
    "MAX_HANDLE_TTL",
    "PROPERTIES",
    "PROPERTY_BY_NAME",
    "REQUIRED_FILE_FIELDS",
    "ROUTES",
    "ROUTE_BY_NAME",
    "SCHEMAS",
    "SETTABLE_PROPERTIES",
    "SYSTEM_SOCKET",
    "SYSTEM_STATE_DIR",
    "Action",
    "BodyField",
    "CliOption",
    "FileField",
    "Property",
    "Route",
    "default_socket",
    "default_state_dir",
    "json_type_matches",
]
