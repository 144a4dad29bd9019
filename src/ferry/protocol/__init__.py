"""The API contract shared by ferryd, the clients and the CLI (SPEC §5-§7)."""
