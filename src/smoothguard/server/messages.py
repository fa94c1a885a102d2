"""OpenAI chat ``messages`` -> the one prompt and the one medium SmoothGuard answers about.

Accepted: ``system`` / ``developer`` messages (text) and ``user`` messages whose content is a string or
a list of ``text``, ``image_url`` and ``input_audio`` parts, with exactly one image (image models) or
one audio clip (audio models) in the conversation. The prompt is every text in order, joined by
newlines (system text first, as it comes); the model sees the medium before the prompt, as in its
own chat template. Earlier assistant turns are refused: the models are asked one question at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from smoothguard.server.errors import ApiError
from smoothguard.server.media import decode_audio, decode_image
from smoothguard.server.settings import ServerSettings

TEXT_ROLES = ("system", "developer")
_MEDIA_PARTS = {"image_url": "image", "input_audio": "audio"}


@dataclass
class ChatInput:
    """One question: ``media`` is pixels [3, H, W] in [0, 1] or a waveform [T] in [-1, 1]."""

    prompt: str
    media: torch.Tensor


def parse_messages(
    messages: list[dict[str, Any]],
    modality: str,
    settings: ServerSettings,
    sampling_rate: int | None = None,
    *,
    check_prompt: Callable[[str], None] | None = None,
) -> ChatInput:
    """Validate ``messages`` and decode their one medium (422/413 ``ApiError`` naming the field at fault).

    ``check_prompt`` sees the prompt before the medium is decoded (or fetched), and may refuse it."""
    texts: list[str] = []
    media: list[tuple[dict[str, Any], str]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{i}]"
        if role in ("assistant", "tool", "function"):
            raise _invalid(
                f"{where}: {role} messages are not supported; send one user message (with system messages before it)",
                f"{where}.role",
                "unsupported",
            )
        if role not in (*TEXT_ROLES, "user"):
            raise _invalid(f"{where}.role must be user, system or developer, got {role!r}", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise _invalid(f"{where}.content must be a string or a list of content parts", f"{where}.content")
        for j, part in enumerate(content):
            text, is_media = _part(part, f"{where}.content[{j}]", role)
            if is_media:
                media.append((part, f"{where}.content[{j}]"))
            elif text:
                texts.append(text)
    prompt = "\n".join(text for text in texts if text.strip())
    if not prompt:
        raise _invalid("the messages hold no text: add a text part with the question", "messages", "missing_prompt")
    if check_prompt is not None:
        check_prompt(prompt)
    return ChatInput(prompt, _medium(media, modality, settings, sampling_rate))


def _part(part: Any, where: str, role: str) -> tuple[str, bool]:
    """(text of a text part, whether it is a medium); a malformed or unknown part raises 422."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _invalid(f"{where} must be an object with a string 'type'", where)
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise _invalid(f"{where}.text must be a string", f"{where}.text")
        return part["text"], False
    if kind not in _MEDIA_PARTS:
        raise _invalid(
            f"{where}: unsupported content part type {kind!r}; use text, image_url or input_audio",
            where,
            "unsupported_content_part",
        )
    if role != "user":
        raise _invalid(f"{where}: {role} messages hold text only; put the {kind} in the user message", where)
    fields = {"image_url": ("url",), "input_audio": ("data", "format")}[kind]
    value = part.get(kind)
    if not isinstance(value, dict) or not all(isinstance(value.get(f), str) for f in fields):
        shape = ", ".join(f'"{f}": "..."' for f in fields)
        raise _invalid(f"{where}.{kind} must be an object {{{shape}}}", f"{where}.{kind}")
    return "", True


def _medium(
    media: list[tuple[dict[str, Any], str]], modality: str, settings: ServerSettings, sampling_rate: int | None
) -> torch.Tensor:
    part_name = "image_url" if modality == "image" else "input_audio"
    if not media:
        raise _invalid(f"this is an {modality} model: add one {part_name} part", "messages", f"missing_{modality}")
    if len(media) > 1:
        raise _invalid(
            f"{len(media)} media parts; send exactly one {part_name} per request", media[1][1], "too_many_media"
        )
    part, where = media[0]
    if _MEDIA_PARTS[part["type"]] != modality:
        raise _invalid(f"{where}: this is an {modality} model; send an {part_name} part", where, "wrong_modality")
    if modality == "image":
        return decode_image(part["image_url"]["url"], settings, where)
    if sampling_rate is None:
        raise _invalid("this audio model declares no sampling rate", where, "unsupported")
    audio = part["input_audio"]
    return decode_audio(audio["data"], audio["format"], sampling_rate, where)


def _invalid(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(422, code, message, param=param)
