"""The automatic-mask parameters are declared once (`MaskGeneratorParams`); everything else agrees with it."""
from __future__ import annotations

import inspect

from segany.predict.amg.generator import MaskGenerator
from segany.predict.amg.params import amg_fields


def test_generator_signature_defaults_are_the_declared_defaults() -> None:
    signature = inspect.signature(MaskGenerator.__init__).parameters
    declared = {name: spec.default for name, spec in amg_fields().items()}
    assert {name: signature[name].default for name in declared} == declared


def test_http_and_seed_schemas_take_bounds_from_the_declaration() -> None:
    from segany.server.dialects.auto_params import AutoParams
    from segany.server.dialects.replicate_seed import Input

    auto = AutoParams.model_json_schema()["properties"]
    seed = Input.model_json_schema()["properties"]
    assert auto["crop_n_layers"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": 4}
    assert (seed["crop_n_layers"]["minimum"], seed["crop_n_layers"]["maximum"]) == (0, 4)
    assert seed["crop_n_layers"]["default"] == 1 and "default 0" in auto["crop_n_layers"]["description"]
