"""X-AnyLabeling request bodies and the model cards `GET /v1/models` lists (X-AnyLabeling-Server's shapes)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Mark(BaseModel):
    """A click (`data` [x, y]; `label` 1 positive, 0 negative) or a rectangle ([x1, y1, x2, y2]), in pixels."""

    model_config = ConfigDict(extra="allow")
    type: Literal["point", "rectangle"]
    data: list[float]
    label: int = 1

    @model_validator(mode="after")
    def _check_data(self) -> Mark:
        wanted = 2 if self.type == "point" else 4
        if len(self.data) != wanted:
            raise ValueError(f"a {self.type} mark needs {wanted} numbers in 'data', got {len(self.data)}")
        if self.type == "rectangle":  # drawn in any direction: corners as top-left, bottom-right
            x1, y1, x2, y2 = self.data
            self.data = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
        return self


class PredictParams(BaseModel):
    model_config = ConfigDict(extra="allow")  # the client also sends iou_threshold, current_task, ...
    marks: list[Mark] = Field(default_factory=list)
    text_prompt: str | None = None
    conf_threshold: float = Field(0.0, ge=0.0, le=1.0)
    epsilon_factor: float = Field(0.001, ge=0.0, le=1.0)
    box_threshold: float | None = Field(None, ge=0.0, le=1.0)
    text_threshold: float | None = Field(None, ge=0.0, le=1.0)
    label: str | None = None  # the label for mark results (X-AnyLabeling's default: AUTOLABEL_OBJECT)


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    image: str
    params: PredictParams = Field(default_factory=PredictParams)


_MARK_WIDGETS = ("output_label", "output_select_combobox", "button_add_point", "button_remove_point",
                 "button_add_rect", "button_clear", "button_finish_object", "mask_fineness_slider",
                 "mask_fineness_value_label")
_TEXT_WIDGETS = ("edit_text", "button_send", "edit_conf")


def model_card(variant: str, text_model: str | None) -> dict[str, Any]:
    """`{display_name, widgets, params}` for one segany variant, as X-AnyLabeling's model list reads it."""
    names = _MARK_WIDGETS + (_TEXT_WIDGETS if text_model else ())
    widgets = [{"name": name, "value": 0.3 if name == "edit_conf" else None} for name in names]
    return {"display_name": f"Segment Anything 2 ({variant}, segany)", "widgets": widgets,
            "params": {"variant": variant, "text_model": text_model, "output_modes": ["polygon"]},
            "batch_processing_mode": "default"}
