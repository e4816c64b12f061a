"""``GET /metrics`` on the HTTP door: Prometheus text that moves when turns run.

The real app under uvicorn on a loopback port, with scripted models (as in test_http_api.py).
The metrics registry is per process and other tests run turns too, so every check is a delta.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from switchboard.server import create_app
from switchboard.settings import Settings
from tests.stacks import KEY, LOCAL, REGISTRY, scripted_board, serve_in_thread

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("metrics")
    registry = root / "models.yaml"
    registry.write_text(REGISTRY)  # the local model is priced here, so turns cost something
    settings = Settings(data_dir=root / "data", models_file=registry, cache_ttl_s=0)
    board, _, _ = scripted_board(settings)
    with serve_in_thread(create_app(settings, board, api_keys=[KEY])) as base:
        yield base


def scrape(url: str) -> Samples:
    r = httpx.get(f"{url}/metrics", timeout=30)  # no key: like /healthz
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def ask(url: str, text: str, *, stream: bool = False, conversation: str) -> httpx.Response:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {KEY}", "X-Conversation-Id": conversation},
                   json={"model": "switchboard", "stream": stream, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r


def test_a_two_part_turn_moves_turn_agent_model_and_routing_metrics(url: str) -> None:
    before = scrape(url)
    reply = ask(url, "How many customers do we have, and what is your refund policy?", conversation="metrics-1").json()
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("switchboard_turns_total") == 1
    assert delta("switchboard_turn_errors_total") == 0
    assert delta("switchboard_turn_latency_seconds_count") == 1 and delta("switchboard_turn_latency_seconds_sum") > 0
    for agent in ("sql", "rag"):
        assert delta("switchboard_agent_latency_seconds_count", agent=agent) == 1
        assert delta("switchboard_routes_total", agent=agent, llm_asked="false") == 1
        assert delta("switchboard_agent_errors_total", agent=agent) == 0
    assert delta("switchboard_model_calls_total", model=LOCAL, cached="false") == 2
    usage = reply["usage"]
    assert delta("switchboard_model_tokens_total", model=LOCAL, direction="input") == usage["prompt_tokens"] > 0
    assert delta("switchboard_model_tokens_total", model=LOCAL, direction="output") == usage["completion_tokens"] > 0
    assert delta("switchboard_model_cost_usd_total", model=LOCAL) == pytest.approx(reply["switchboard"]["cost_usd"])
    assert reply["switchboard"]["cost_usd"] > 0


def test_a_streamed_turn_is_counted_too(url: str) -> None:
    before = scrape(url)
    assert ask(url, "What is your refund policy?", stream=True, conversation="metrics-2").text.endswith("[DONE]\n\n")
    after = scrape(url)
    assert value(after, "switchboard_turns_total") - value(before, "switchboard_turns_total") == 1
    assert (value(after, "switchboard_routes_total", agent="rag", llm_asked="false")
            - value(before, "switchboard_routes_total", agent="rag", llm_asked="false")) == 1


def test_metrics_carry_no_conversation_content_and_speak_openmetrics_when_asked(url: str) -> None:
    ask(url, "How many customers do we have?", conversation="metrics-secret-thread")
    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert "metrics-secret-thread" not in text and "customers" not in text
    assert all(line.startswith(("#", "switchboard_")) for line in text.splitlines() if line)  # only our registry
    om = httpx.get(f"{url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}, timeout=30)
    assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")
