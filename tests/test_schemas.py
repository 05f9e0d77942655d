"""Every schema the project ships is a valid JSON Schema (checked here, not at every start)."""

import json

import pytest
from jsonschema import Draft202012Validator

from planning.schemas import schema_dir


@pytest.mark.parametrize("path", sorted(schema_dir().glob("*.json")), ids=lambda p: p.name)
def test_the_schema_is_valid_against_the_2020_12_metaschema(path):
    Draft202012Validator.check_schema(json.loads(path.read_text()))
