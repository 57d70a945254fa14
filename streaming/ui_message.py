"""Folds AI SDK UI-message-stream chunks into a message's parts, the way an AI SDK client would."""
from __future__ import annotations

from typing import Any

from .safe_json import UnsafeJSON, loads_strict

UNFINISHED_TOOL_ERRORS = {
    "input-streaming": "The answer stopped before the tool call was complete.",
    "input-available": "The tool did not run: the answer stopped first.",
    "approval-requested": "The tool did not run: the answer stopped before it was approved.",
    "approval-responded": "The tool did not finish: the answer stopped first.",
}
STOPPED_WHILE_RUNNING = "The tool did not finish: the answer stopped first."


class UIMessageBuilder:
    """Applies chunks in index order; `parts` and `text` are the message they describe."""

    def __init__(self) -> None:
        self.parts: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.error_text: str | None = None
        self._open: dict[tuple[str, str], dict[str, Any]] = {}
        self._tools: dict[str, dict[str, Any]] = {}
        self._tool_input_text: dict[str, str] = {}

    @property
    def text(self) -> str:
        return "".join(part["text"] for part in self.parts if part["type"] == "text")

    def apply(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type", "")
        if kind == "start-step":
            self.parts.append({"type": "step-start"})
        elif kind in ("text-start", "reasoning-start"):
            # As the AI SDK (v7) builds them: reasoning parts keep their id, text parts do not.
            part = {"type": "text", "text": ""} if kind == "text-start" else {"type": "reasoning", "id": chunk["id"], "text": ""}
            self.parts.append(part)
            self._open[(part["type"], chunk["id"])] = part
        elif kind in ("text-delta", "reasoning-delta"):
            part = self._open.get((kind.split("-")[0], chunk.get("id", "")))
            if part is None:  # a delta without its start still carries text worth keeping
                part = {"type": kind.split("-")[0], "text": ""}
                self.parts.append(part)
                self._open[(part["type"], chunk.get("id", ""))] = part
            part["text"] += chunk.get("delta", "")
        elif kind in ("text-end", "reasoning-end"):
            self._open.pop((kind.split("-")[0], chunk.get("id", "")), None)
        elif kind == "tool-input-start":
            self._tool(chunk)
        elif kind == "tool-input-delta":
            call_id = chunk.get("toolCallId", "")
            self._tool_input_text[call_id] = self._tool_input_text.get(call_id, "") + chunk.get("inputTextDelta", "")
        elif kind == "tool-input-available":
            part = self._tool(chunk)
            part.update(state="input-available", input=chunk.get("input"))
        elif kind == "tool-approval-request":
            part = self._tool(chunk)
            part.update(state="approval-requested", approval={"id": chunk.get("approvalId", "")})
        elif kind == "tool-approval-response":
            part = next((p for p in self._tools.values() if p.get("approval", {}).get("id") == chunk.get("approvalId")),
                        None)
            if part is not None:
                part.update(state="approval-responded",
                            approval={"id": chunk.get("approvalId"), "approved": bool(chunk.get("approved"))})
        elif kind == "tool-output-available":
            part = self._tool(chunk)
            part.update(state="output-available", output=chunk.get("output"))
            part.pop("errorText", None)
            if chunk.get("preliminary"):
                part["preliminary"] = True
            else:
                part.pop("preliminary", None)
        elif kind == "tool-output-error":
            part = self._tool(chunk)
            part.update(state="output-error", errorText=chunk.get("errorText", ""))
            part.pop("output", None)
            part.pop("preliminary", None)
        elif kind == "tool-output-denied":
            self._tool(chunk)["state"] = "output-denied"
        elif kind.startswith("data-"):
            self._data(chunk)
        elif kind == "finish":
            self.finish_reason = chunk.get("finishReason")
        elif kind == "error":
            self.error_text = chunk.get("errorText")

    def _tool(self, chunk: dict[str, Any]) -> dict[str, Any]:
        call_id = chunk.get("toolCallId", "")
        part = self._tools.get(call_id)
        if part is None:
            part = {
                "type": f"tool-{chunk.get('toolName', 'unknown')}",
                "toolCallId": call_id,
                "state": "input-streaming",
                "input": None,
            }
            self._tools[call_id] = part
            self.parts.append(part)
        return part

    def _data(self, chunk: dict[str, Any]) -> None:
        if chunk.get("transient"):
            return
        data_id = chunk.get("id")
        if data_id is not None:
            for part in self.parts:
                if part["type"] == chunk["type"] and part.get("id") == data_id:
                    part["data"] = chunk.get("data")
                    return
        part = {"type": chunk["type"], "data": chunk.get("data")}
        if data_id is not None:
            part["id"] = data_id
        self.parts.append(part)

    def unfinished_tool_calls(self) -> list[tuple[str, str]]:
        """(toolCallId, why) of each tool call the stream has not finished (a preliminary output is
        not an end)."""
        return [
            (call_id, UNFINISHED_TOOL_ERRORS.get(part["state"], STOPPED_WHILE_RUNNING))
            for call_id, part in self._tools.items()
            if part["state"] in UNFINISHED_TOOL_ERRORS or part.get("preliminary")
        ]

    def final_parts(self) -> list[dict[str, Any]]:
        """The parts to store: tool calls the stream left unfinished end as errors, never pending."""
        for call_id, why in self.unfinished_tool_calls():
            part = self._tools[call_id]
            if part["state"] == "input-streaming":
                part["input"] = _parse_json_or_text(self._tool_input_text.get(call_id, ""))
            part.pop("preliminary", None)
            part.pop("output", None)
            part.update(state="output-error", errorText=why)
        return self.parts


def _parse_json_or_text(text: str) -> Any:
    try:
        return loads_strict(text) if text else None
    except UnsafeJSON:
        return text
