"""Request and response models of the OpenAI-compatible API (routes/chat.py): OpenAI's wire format, with the
service's own fields (:class:`AnswerOut`) beside OpenAI's in a completion."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memo.query import MAX_QUESTION_CHARS
from services.gateway.schemas import AnswerOut, Name, Text


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["text"]
    text: Text


class MessageIn(BaseModel):
    """A message of the conversation. Other fields OpenAI's messages may carry (name, tool calls) are ignored."""

    model_config = ConfigDict(strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False  # a last chunk with the usage and no choices, before [DONE]


class ChatIn(BaseModel):
    """OpenAI's chat request. The last message, the user's, is the question; the query protocol answers each question
    on its own, so earlier messages are not used. The sampling parameters are accepted, for clients that always send
    them, and not applied: the protocol decodes greedily with its own token budgets. Any other parameter (tools,
    response_format, stop, logprobs...) is refused rather than ignored."""

    model_config = ConfigDict(strict=True, extra="forbid")
    model: Name = Field(min_length=1, max_length=200, description="the collection's name (GET /v1/models)")
    messages: list[MessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    user: Name | None = Field(default=None, max_length=200)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("n must be 1: the service gives one answer per question")
        return n

    @model_validator(mode="after")
    def _check(self) -> ChatIn:
        last = self.messages[-1]
        if last.role != "user" or not last.text().strip():
            raise ValueError("the last message must be the user's question (role 'user', with text): it is answered")
        if len(last.text()) > MAX_QUESTION_CHARS:
            raise ValueError(f"the question (the last message) is longer than {MAX_QUESTION_CHARS} characters")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def question(self) -> str:
        return self.messages[-1].text()


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChoiceOut(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop"] = "stop"


class UsageOut(BaseModel):
    """The tokens of every Memory and Executive call made for the answer: the prompts' message contents and the
    completions, counted with the service's tokenizer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionOut(AnswerOut):
    """OpenAI's ``chat.completion``, and the service's fields (abstained, sources, trace, the memory version...).
    ``usage`` is null when the service has no tokenizer to count with (never an estimate)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut | None


class ModelOut(BaseModel):
    """A collection the caller may query, as an OpenAI model: its ``id`` is the collection's name."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "memo"
    collection_id: str
    memory_version_id: str  # the memory version that answers now


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
