"""Triage: split a turn into clauses, route each to a specialist, cheaply.

A local classifier decides in milliseconds. Only a clause it is unsure about is sent to an LLM
(one short call with a fixed prefix). Every decision carries its scores and reason, and is logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from langchain_core.messages import HumanMessage, SystemMessage

from agents import prompts
from agents.contract import Subtask
from agents.followup import looks_like_follow_up
from agents.profile import BusinessProfile
from tools.models.gateway import AllModelsFailed, call_model
from tools.models.local_llm import LocalRuntimeUnavailable, PromptTooLong
from tools.models.registry import ModelHandle, ModelRegistry
from tools.models.values import LedgerEntry
from tools.routing.intent import IntentClassifier, Prediction, RouteConfig

log = logging.getLogger("switchboard.triage")

_SENTENCE = re.compile(r"(?<=[.?!;])\s+")
# Conjunctions that may join two independent requests in one sentence.
_CONJ = re.compile(r",?\s+(?:and also|and then|and|also|plus|as well as)\s+", re.IGNORECASE)
# Words by which a lone sentence beside an image points at it.
_POINTS_AT_IMAGE = re.compile(r"\b(this|these|that|it|attached|image|picture|photo|screenshot|scan|receipt|invoice|"
                              r"label|chart)\b", re.IGNORECASE)
SPLIT_FLOOR = 0.40  # a conjunction splits a sentence when one half is sure and the other scores this much
IMAGE_CLAUSE_MIN = 0.15  # vision+records_check probability for a clause to be "about the image"
# A clause that is only a greeting or thanks: beside a real request it needs no answer of its own.
_PLEASANTRY = re.compile(r"^(?:(?:hi|hello|hey|hiya|howdy|greetings|good (?:morning|afternoon|evening|day)|"
                         r"thanks|thank you|thx|cheers|please|ok(?:ay)?|great)(?: there| so much| again| all)?"
                         r"[\s,.!?]*)+$", re.IGNORECASE)


def _sentences(text: str) -> list[str]:
    """The message's sentences, as triage splits them first (empty ones dropped)."""
    return [s for s in (part.strip() for part in _SENTENCE.split(text.strip())) if s]


def too_long_refusal(length: int, limit: int) -> str:
    return (f"Your message is {length:,} characters long; I can take at most {limit:,} characters in one message, "
            "so I did not act on it. Please shorten it, or send your questions a few at a time.")


def skipped_parts_note(skipped: list[str], limit: int) -> str:
    n = len(skipped)
    return (f"(Your message has {limit + n} parts; I answer at most {limit} per message, so the last {n} "
            f"part{'s were' if n != 1 else ' was'} not looked at: please send {'them' if n != 1 else 'it'} "
            "again in another message.)")


@dataclass
class TriageDecision:
    subtasks: list[Subtask]
    llm_calls: int
    ledger: list[LedgerEntry]
    clauses: list[str]
    # the whole message refused (too long to split): synthesis answers with this, no specialist runs
    refusal: str = ""
    # clauses past the per-message cap: not answered, and the answer says so (synthesis)
    skipped: list[str] = field(default_factory=list)
    skipped_note: str = ""

    def as_log(self) -> dict:
        out = {
            "clauses": self.clauses,
            "llm_calls": self.llm_calls,
            "subtasks": [s.model_dump() for s in self.subtasks],
        }
        if self.refusal:
            out["refusal"] = self.refusal
        if self.skipped:
            out["skipped_parts"] = len(self.skipped)
            out["skipped_note"] = self.skipped_note
        return out


class Triage:
    def __init__(
        self,
        config: RouteConfig,
        classifier: IntentClassifier,
        registry: ModelRegistry | None,
        threshold: float | None = None,
        use_llm: bool = True,
        voters: list[str] | tuple[str, ...] = (),
        max_chars: int | None = None,
        max_parts: int | None = None,
        *,
        profile: BusinessProfile,
        relevance: Callable[[str], float] | None = None,
        relevance_floor: float = 0.30,
    ) -> None:
        if (max_chars is not None and max_chars < 1) or (max_parts is not None and max_parts < 1):
            raise ValueError("triage max_chars and max_parts must be at least 1")
        self.max_chars = max_chars  # a longer message is refused whole, before it is split
        self.max_parts = max_parts  # clauses past this many are not answered (the answer says so)
        self.voters = list(voters)
        if registry is not None:
            unknown = [v for v in self.voters if v not in registry.specs]
            if unknown:
                raise ValueError(f"triage_voters names unknown registry models {unknown}")
        self.config = config
        self.profile = profile
        # the help center's best match for a clause (cosine, 0-1): a clause routed to it that
        # matches nothing there (small talk about dogs, thanks, trivia) goes to the next route
        self.relevance, self.relevance_floor = relevance, relevance_floor
        self.classifier = classifier
        self.registry = registry
        self.threshold = config.threshold if threshold is None else threshold
        self.use_llm = use_llm and registry is not None

    # --- splitting ----------------------------------------------------------------------
    def split(self, text: str) -> list[tuple[str, Prediction]]:
        """Sentences first; then a conjunction split where both halves go to different places."""
        clauses: list[tuple[str, Prediction]] = []
        for sentence in _sentences(text):
            clauses.extend(self._split_sentence(sentence))
        return clauses

    def _split_sentence(self, sentence: str) -> list[tuple[str, Prediction]]:
        whole = self.classifier.predict([sentence])[0]
        for m in _CONJ.finditer(sentence):
            left, right = sentence[: m.start()].strip(" ,"), sentence[m.end() :].strip(" ,")
            if len(left.split()) < 3 or len(right.split()) < 3:
                continue
            pl, pr = self.classifier.predict([left, right])
            if (  # two requests for different places: one half sure, the other at least plausible
                pl.label != pr.label                      # (an unsure half is resolved like any unsure clause)
                and max(pl.confidence, pr.confidence) >= self.threshold
                and min(pl.confidence, pr.confidence) >= SPLIT_FLOOR
            ):
                return [(left, pl), *self._split_sentence(right)]
        return [(sentence, whole)]

    def _remembered(self, text: str) -> bool:
        """Every sentence's vector is in the embedder's memo (the question was just asked): routed
        on the event loop. A new question is embedded on a worker thread instead: a few ms of ONNX
        Runtime that another core runs while the loop serves other conversations."""
        embedder = self.classifier.embedder
        return all(embedder.remembers([s]) for s in _sentences(text))

    # --- deciding ----------------------------------------------------------------------
    async def decide(
        self, text: str, *, has_image: bool, previous_agents: list[str] | None = None, policy: str | None = None
    ) -> TriageDecision:
        text = text.strip()
        if self.max_chars is not None and len(text) > self.max_chars:
            log.info("triage: refused a %d-character message (limit %d)", len(text), self.max_chars)
            return TriageDecision(subtasks=[], llm_calls=0, ledger=[], clauses=[],
                                  refusal=too_long_refusal(len(text), self.max_chars))
        if not text and has_image:
            text = "Please look at the attached image"
        clauses = (self.split(text) if self._remembered(text) else await asyncio.to_thread(self.split, text)) \
            if text else []
        if not has_image:  # an image route cannot answer without an image: the best other route does
            clauses = [(c, self._without_image_routes(p)) for c, p in clauses]
        skipped: list[str] = []
        if self.max_parts is not None and len(clauses) > self.max_parts:
            skipped = [c for c, _ in clauses[self.max_parts:]]
            clauses = clauses[: self.max_parts]
            log.info("triage: %d parts past the limit of %d were not routed", len(skipped), self.max_parts)
        subtasks: list[Subtask] = []
        ledger: list[LedgerEntry] = []
        llm_calls = 0
        image_clause = self._image_clause(clauses) if has_image else None
        for clause, pred in clauses:
            if clause == image_clause:
                vscore = pred.scores.get("vision", 0.0) + pred.scores.get("records_check", 0.0)
                route = "records_check" if pred.label == "records_check" else "vision"
                reason = f"an image is attached and this clause is the most about it (vision score {vscore:.3f})"
                subtasks.extend(self._subtasks_for(route, clause, pred, reason, False, start=len(subtasks)))
                continue
            route, reason, asked = pred.label, f"classifier {pred.confidence:.3f} >= {self.threshold:.3f}", False
            votes: dict[str, str] = {}
            if pred.confidence < self.threshold:
                if previous_agents and len(previous_agents) == 1 and looks_like_follow_up(clause):
                    route = self._route_for_agent(previous_agents[0]) or pred.label
                    reason = f"classifier unsure ({pred.confidence:.3f} < {self.threshold:.3f}); follow-up of the previous {previous_agents[0]} turn"
                elif self.use_llm and self.voters:
                    route, entries, votes = await self._vote(clause, pred.label, has_image, policy)
                    ledger.extend(entries)
                    llm_calls += len(entries)
                    asked = True
                    tally = ", ".join(f"{who}: {r}" for who, r in votes.items())
                    reason = (f"classifier unsure ({pred.confidence:.3f} < {self.threshold:.3f}); "
                              f"vote chose {route} ({tally})")
                elif self.use_llm:
                    try:
                        route, entry = await self._ask_llm(clause, has_image, policy)
                    except (AllModelsFailed, LocalRuntimeUnavailable, PromptTooLong) as exc:
                        # routing degrades to the classifier's guess; the specialist reports the outage
                        log.warning("triage LLM unavailable (%s): keeping the classifier's guess", exc)
                        reason = (f"classifier unsure ({pred.confidence:.3f} < {self.threshold:.3f}); "
                                  f"LLM unavailable, kept the classifier's {route}")
                    else:
                        ledger.append(entry)
                        llm_calls += 1
                        asked = True
                        reason = f"classifier unsure ({pred.confidence:.3f} < {self.threshold:.3f}); LLM chose {route}"
                else:
                    route = "general"
                    reason = f"classifier unsure ({pred.confidence:.3f} < {self.threshold:.3f}); no LLM: general"
            if self.relevance is not None and self.config.routes[route].agents == ("rag",):
                route, reason = await self._check_help_center(clause, pred, route, reason, has_image)
            subtasks.extend(s.model_copy(update={"votes": votes})
                            for s in self._subtasks_for(route, clause, pred, reason, asked, start=len(subtasks)))
        if has_image and not any(s.agent == "vision" for s in subtasks):
            subtasks.insert(0, self._image_subtask(text, clauses))
        subtasks = _wire_image_dependencies(_one_general_part(self._one_image_reading(subtasks)))
        decision = TriageDecision(subtasks=subtasks, llm_calls=llm_calls, ledger=ledger, clauses=[c for c, _ in clauses],
                                  skipped=skipped,
                                  skipped_note=skipped_parts_note(skipped, self.max_parts or 0) if skipped else "")
        for s in subtasks:
            log.info("route %s -> %s (%s) scores=%s", s.task, s.agent, s.reason, s.scores)
        return decision

    @staticmethod
    def _image_clause(clauses: list[tuple[str, Prediction]]) -> str | None:
        """With an image attached, the clause most about it goes to vision even if another
        route scored higher ("what's the total on this?" reads like a SQL question)."""
        def vision_score(p: Prediction) -> float:
            return p.scores.get("vision", 0.0) + p.scores.get("records_check", 0.0)

        if not clauses:
            return None
        if len(clauses) == 1 and _POINTS_AT_IMAGE.search(clauses[0][0]):  # "What's the total on this?"
            return clauses[0][0]
        clause, pred = max(clauses, key=lambda cp: vision_score(cp[1]))
        return clause if vision_score(pred) >= IMAGE_CLAUSE_MIN else None

    def _image_routes(self) -> set[str]:
        return {r.name for r in self.config.routes.values() if "vision" in r.agents}

    def _one_image_reading(self, subtasks: list[Subtask]) -> list[Subtask]:
        """Several sentences about the one image ("Is this invoice one of yours? Please check it
        against your database") are one part: the image is read once, for all they ask, and
        checked against the records once when any of them asks for that."""
        image_routes = self._image_routes()
        group = [s for s in subtasks if s.route in image_routes]
        tasks = list(dict.fromkeys(s.task for s in group))
        if len(tasks) < 2:
            return subtasks
        route = "records_check" if any(s.route == "records_check" for s in group) else "vision"
        first = group[0]
        joined = first.model_copy(update={"task": " ".join(tasks), "route": route, "agent": "vision",
                                          "depends_on": [], "reason": first.reason + "; every sentence about "
                                          "the image, read once"})
        parts = [joined]
        if route == "records_check":
            parts.append(joined.model_copy(update={"id": f"{first.id}-check", "agent": "sql",
                                                   "depends_on": [first.id]}))
        out: list[Subtask] = []
        for s in subtasks:
            if s is first:
                out.extend(parts)
            elif s not in group:
                out.append(s)
        return _renumbered(out)

    async def _check_help_center(self, clause: str, pred: Prediction, route: str, reason: str,
                                 has_image: bool) -> tuple[str, str]:
        """A clause for the help center that nothing in it resembles goes to the next route the
        classifier scored (never another help-center or image route without an image)."""
        assert self.relevance is not None
        try:
            top = await asyncio.to_thread(self.relevance, clause)
        except Exception as exc:  # noqa: BLE001 - routing does not fail on the knowledge base: keep the route
            log.warning("triage: help-center check failed (%s): keeping %s", exc, route)
            return route, reason
        if top >= self.relevance_floor:
            return route, reason
        allowed = [r for r in self.candidates(has_image) if self.config.routes[r].agents != ("rag",)]
        if not allowed:
            return route, reason
        best = max(allowed, key=lambda r: pred.scores.get(r, 0.0))
        return best, (f"{reason}; the help center has nothing close (best match {top:.2f} < "
                      f"{self.relevance_floor:.2f}): {best}")

    def _without_image_routes(self, pred: Prediction) -> Prediction:
        image_routes = self._image_routes()
        if pred.label not in image_routes:
            return pred
        rest = {k: v for k, v in pred.scores.items() if k not in image_routes}
        if not rest or sum(rest.values()) <= 0:
            return pred
        best = max(rest, key=lambda k: rest[k])
        return Prediction(label=best, confidence=rest[best] / sum(rest.values()), scores=pred.scores)

    def candidates(self, has_image: bool) -> list[str]:
        """The routes an LLM may choose for a clause: an image route only when an image is attached
        (a small model sent "What's the tallest mountain?" to vision)."""
        return [r.name for r in self.config.routes.values() if has_image or "vision" not in r.agents]

    def route_list(self, has_image: bool) -> str:
        """The teams as the LLM reads them; a description may name the business's ``{name}``,
        ``{noun}`` and what its ``{database}`` holds (a generated routes file does)."""
        fill = {"{name}": self.profile.name, "{noun}": self.profile.noun,
                "{database}": self.profile.database or "its records"}
        lines = []
        for name in self.candidates(has_image):
            text = self.config.routes[name].description
            for key, value in fill.items():
                text = text.replace(key, value)
            lines.append(f"{name}: {text}")
        return "\n".join(lines)

    def _route_for_agent(self, agent: str) -> str | None:
        for r in self.config.routes.values():
            if r.agents == (agent,):
                return r.name
        return None

    def _subtasks_for(
        self, route: str, clause: str, pred: Prediction, reason: str, asked: bool, start: int
    ) -> list[Subtask]:
        agents = self.config.routes[route].agents
        out: list[Subtask] = []
        for i, agent in enumerate(agents):
            sid = f"t{start + len(out) + 1}"
            out.append(
                Subtask(
                    id=sid,
                    agent=agent,
                    task=clause,
                    route=route,
                    confidence=round(pred.confidence, 4),
                    scores=pred.scores,
                    reason=reason,
                    llm_asked=asked,
                    depends_on=[f"t{start + len(out)}"] if i > 0 else [],
                )
            )
        return out

    def _image_subtask(self, text: str, clauses: list[tuple[str, Prediction]]) -> Subtask:
        scores = clauses[0][1].scores if clauses else {}
        return Subtask(
            id="t0",
            agent="vision",
            task=text or "Describe the attached image",
            route="vision",
            confidence=1.0,
            scores=scores,
            reason="an image is attached and no clause was routed to vision",
        )

    async def _vote(self, clause: str, guess: str, has_image: bool, policy: str | None
                    ) -> tuple[str, list[LedgerEntry], dict[str, str]]:
        """Ensemble for an unsure clause: the classifier's guess and one vote per configured
        model, majority wins; a tie goes to the first model's vote. Every vote is recorded."""
        assert self.registry is not None
        votes: dict[str, str] = {"classifier": guess}
        entries: list[LedgerEntry] = []
        for name in self.voters:
            route, entry = await self._ask_llm(clause, has_image, policy, handle=self.registry.handle(name, "triage"))
            entry.role = "vote"
            votes[name] = route
            entries.append(entry)
        counts = Counter(votes.values())
        best = max(counts.values())
        winner = next(r for r in [votes[self.voters[0]], *votes.values()] if counts[r] == best)
        return winner, entries, votes

    async def _ask_llm(self, clause: str, has_image: bool, policy: str | None,
                       handle: ModelHandle | None = None) -> tuple[str, LedgerEntry]:
        assert self.registry is not None
        handle = handle or self.registry.for_agent("triage", policy)
        msgs = [
            SystemMessage(prompts.TRIAGE_SYSTEM.format(routes=self.route_list(has_image), **self.profile.prompt_values())),
            HumanMessage(
                prompts.TRIAGE_USER.format(
                    clause=clause, image_note=" (an image is attached)" if has_image else ""
                )
            ),
        ]
        reply, entry = await call_model(handle, msgs, agent="triage", task=clause, max_tokens=6)
        word = re.findall(r"[a-z_]+", str(reply.content).lower())
        allowed = self.candidates(has_image)
        route = next((w for w in word if w in allowed), "general")
        return route, entry


def _one_general_part(subtasks: list[Subtask]) -> list[Subtask]:
    """The generalist answers a turn's small talk once: its clauses become one part ("Hello! What
    can you help me with?" is one question, not a greeting answered apart), and a greeting or thanks
    beside a real request is not a part at all. Parts are numbered again in order."""
    general = [s for s in subtasks if s.agent == "general" and not s.depends_on]
    others = [s for s in subtasks if s not in general]
    kept = [s for s in general if not (others and _PLEASANTRY.match(s.task.strip()))]
    if len(kept) == len(general) < 2:
        return subtasks  # nothing to merge, nothing to drop
    out: list[Subtask] = []
    for s in subtasks:
        if s in general:
            if not kept or s is not kept[0]:
                continue  # dropped, or merged into the first kept clause
            s = s.model_copy(update={"task": " ".join(k.task for k in kept)})
        out.append(s)
    return _renumbered(out)


def _renumbered(subtasks: list[Subtask]) -> list[Subtask]:
    """Parts numbered t1, t2, ... in order again (the image part added for a turn keeps t0), with
    their dependencies renamed alike."""
    offset = 1 if any(s.id == "t0" for s in subtasks) else 0
    ids = {s.id: s.id if s.id == "t0" else f"t{i + 1 - offset}" for i, s in enumerate(subtasks)}
    return [s.model_copy(update={"id": ids[s.id], "depends_on": [ids.get(d, d) for d in s.depends_on]})
            for s in subtasks]


def _wire_image_dependencies(subtasks: list[Subtask]) -> list[Subtask]:
    """Non-vision work in an image turn waits for what vision read (it goes into its handoff)."""
    vision_ids = [s.id for s in subtasks if s.agent == "vision"]
    if not vision_ids:
        return subtasks
    out = []
    for s in subtasks:
        if s.agent in ("sql",) and not s.depends_on:
            s = s.model_copy(update={"depends_on": list(vision_ids)})
        out.append(s)
    needed = {d for s in out for d in s.depends_on}
    return [s.model_copy(update={"extract_only": True}) if s.id in needed else s for s in out]
