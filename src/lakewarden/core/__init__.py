"""The orchestration: the stages strung together, one statement's path read top to bottom."""
