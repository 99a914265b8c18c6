"""The console's pages and actions in-process against a real Redis: filters, the record page, verdicts,
acknowledgements, replays, bulk acknowledgement, escaping, CSRF, read-only, authentication and secrets."""

from __future__ import annotations

import base64
import html as htmllib
import re
import time

import pytest

from console.feeds import OverviewCore
from console.settings import load_settings
from harness.services import redis_server
from monitoring.simulate import Phase, SimClock, Stream, encode, generate
from service import secrets
from service.review import RedisReviewStore, ReviewFilter
from tests.console.conftest import HOSTILE_ID, AppFactory, Replays, csrf_of, record_item

pytestmark = pytest.mark.integration
SOURCE = "zeroproof.inputs:0:{}"
TOKEN = "console-token-0123456789"


def ids_on(page: str) -> list[str]:
    return [htmllib.unescape(m) for m in re.findall(r'<a class="rec" href="/record/[^"]+">([^<]*)</a>', page)]


def count_on(page: str) -> int:
    m = re.search(r'<strong id="match-count">(\d+)</strong>', page)
    assert m is not None
    return int(m.group(1))


def test_queue_is_newest_first_paginated_and_filtered(make_client: AppFactory, store: RedisReviewStore) -> None:
    t0 = 1_800_000_000.0
    store.record_batch(
        [
            record_item(1, entity="arm-1", labels={"site": "lab-a"}, t=t0 + 1),
            record_item(2, entity="arm-2", labels={"site": "lab-b"}, t=t0 + 2),
            record_item(3, entity="arm-1", labels={"site": "lab-b"}, model="v2", t=t0 + 3),
            record_item(4, entity="arm-3", t=t0 + 4),
            record_item(5, entity="arm-1", labels={"site": "lab-b"}, t=t0 + 5),
        ]
    )
    client = make_client(console_page_size=2)
    page = client.get("/queue").text
    assert ids_on(page) == ["in-5", "in-4"] and count_on(page) == 5 and "page 1 of 3" in page
    assert ids_on(client.get("/queue?page=3").text) == ["in-1"]
    assert ids_on(client.get("/queue?entity=arm-1").text) == ["in-5", "in-3"]
    assert count_on(client.get("/queue?entity=arm-1").text) == 3
    assert ids_on(client.get("/queue", params={"label": "site=lab-b", "model": "known-pole-1"}).text) == [
        "in-5",
        "in-2",
    ]
    assert ids_on(client.get("/queue?model=v2").text) == ["in-3"]
    assert ids_on(client.get("/queue", params={"since": t0 + 2, "until": t0 + 3}).text) == ["in-3", "in-2"]
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0 + 4))
    assert ids_on(client.get("/queue", params={"since": local}).text) == ["in-5", "in-4"]
    store.ack(SOURCE.format(5), by="test")
    assert ids_on(client.get("/queue?entity=arm-1").text) == ["in-3", "in-1"]
    assert ids_on(client.get("/queue?entity=arm-1&state=acked").text) == ["in-5"]
    for bad in ("label=nolabel", "since=yesterday", "state=everything", "verdict=fine", "page=x"):
        r = client.get(f"/queue?{bad}")
        assert r.status_code == 400 and 'id="error"' in r.text
    rows = client.get("/queue.json?entity=arm-2").json()["rows"]
    assert [(r["id"], r["entity"], r["bottom_elements"]) for r in rows] == [("in-2", "arm-2", 1)]


def test_record_page_shows_features_n_d_masks_and_inputs_sharing_the_id(
    make_client: AppFactory, store: RedisReviewStore
) -> None:
    store.record_batch([record_item(7, ident="dup", features=[0.5, None]), record_item(8, ident="dup")])
    page = make_client().get(f"/record/{SOURCE.format(7)}").text
    assert re.search(r'<td class="mono N">-2</td><td class="mono D">0</td>\s*<td class="mono">⊥</td>', page)
    assert re.search(r'<td class="mono N">3</td><td class="mono D">1.5</td>\s*<td class="mono">2</td>', page)
    assert re.findall(r'<td class="mask-bottom">(\w+)</td>', page) == ["true", "false"]
    assert re.findall(r'<td class="mask-gap">(\w+)</td>', page) == ["false", "false"]
    assert "null (missing)" in page and '<td class="">0.5</td>' in page
    assert "topic zeroproof.inputs, partition 0, offset 7" in page and "known-pole-1" in page
    assert f'href="/record/{SOURCE.format(8).replace(":", "%3A")}"' in page  # the other input with id "dup"
    assert make_client().get("/record/zeroproof.inputs:0:999").status_code == 404


def test_input_derived_strings_render_as_text(make_client: AppFactory, store: RedisReviewStore) -> None:
    evil_label = {"<b>site</b>": "\x1b]0;pwned\x07"}
    store.record_batch([record_item(9, ident=HOSTILE_ID, entity="<img src=x onerror=alert(2)>", labels=evil_label)])
    client = make_client()
    page = client.get(f"/record/{SOURCE.format(9)}")
    csrf = csrf_of(page.text)
    client.post(
        f"/record/{SOURCE.format(9)}/verdict",
        data={"csrf": csrf, "verdict": "other", "note": "<script>alert(3)</script>\rline2"},
    )
    for path in (f"/record/{SOURCE.format(9)}", "/queue", "/find?" + "id=" + "%3Cscript%3E", "/queue?verdict=other"):
        text = client.get(path).text
        assert "<script>" not in text and "<img" not in text and "\x1b" not in text and "\r" not in text, path
    text = client.get(f"/record/{SOURCE.format(9)}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J\\x0d" in text
    assert "&lt;img src=x onerror=alert(2)&gt;" in text and "\\x1b]0;pwned\\x07" in text
    assert "&lt;script&gt;alert(3)&lt;/script&gt;\\x0dline2" in text
    headers = page.headers
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


def test_verdict_and_acknowledge_are_kept_with_who_and_when(make_client: AppFactory, store: RedisReviewStore) -> None:
    store.record_batch([record_item(10), record_item(11)])
    client = make_client()
    csrf = csrf_of(client.get("/queue").text)
    r = client.post("/reviewer", data={"csrf": csrf, "reviewer": "ana\x1b", "back": "/queue"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    before = time.time()
    r = client.post(
        f"/record/{SOURCE.format(10)}/verdict",
        data={"csrf": csrf, "verdict": "sensor_fault", "note": "cable loose", "ack": "1"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    rec = store.get(SOURCE.format(10))
    assert rec is not None and rec.status == "acked" and rec.verdict is not None
    assert (rec.verdict["verdict"], rec.verdict["note"], rec.verdict["by"]) == (
        "sensor_fault",
        "cable loose",
        "console:ana",
    )
    assert [(a["action"], a["by"]) for a in rec.audit] == [("verdict", "console:ana"), ("ack", "console:ana")]
    assert all(before <= a["at"] <= time.time() for a in rec.audit)
    page = client.get(r.headers["location"]).text
    assert "Verdict saved." in page and "sensor fault" in page and "cable loose" in page and 'id="ack"' not in page
    r = client.post(f"/record/{SOURCE.format(11)}/ack", data={"csrf": csrf, "note": "seen"}, follow_redirects=False)
    assert r.status_code == 303 and store.get(SOURCE.format(11)).status == "acked"  # type: ignore[union-attr]
    r = client.post(f"/record/{SOURCE.format(11)}/verdict", data={"csrf": csrf, "verdict": "fine"})
    assert r.status_code == 400


def test_state_changing_requests_need_the_csrf_token(make_client: AppFactory, store: RedisReviewStore) -> None:
    store.record_batch([record_item(12)])
    client = make_client()
    csrf = csrf_of(client.get("/").text)
    target = f"/record/{SOURCE.format(12)}"
    assert client.post(target + "/ack", data={"note": "x"}).status_code == 403
    assert client.post(target + "/verdict", data={"verdict": "other", "csrf": "0" * 64}).status_code == 403
    other = make_client()  # another browser: its own session, so this page's token is not valid there
    assert other.post(target + "/ack", data={"csrf": csrf}).status_code == 403
    r = client.post(target + "/ack", data={"csrf": csrf}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert client.post("/bulk-ack", data={"state": "pending", "until": str(time.time())}).status_code == 403
    assert client.get(target + "/ack").status_code == 405  # GET never changes anything
    rec = store.get(SOURCE.format(12))
    assert rec is not None and rec.status == "pending" and rec.audit == [] and rec.verdict is None
    assert client.post(target + "/ack", data={"csrf": csrf}).status_code == 200  # with it: done


def test_read_only_hides_and_refuses_every_action(make_client: AppFactory, store: RedisReviewStore) -> None:
    store.record_batch([record_item(13)])
    client = make_client(console_read_only=True)
    page = client.get(f"/record/{SOURCE.format(13)}").text
    assert "read-only" in page and "save verdict" not in page and 'id="replay"' not in page
    assert "Acknowledge all" not in client.get("/queue").text
    csrf = csrf_of(client.get("/login").text) if 'name="csrf"' in client.get("/login").text else ""
    for path, data in (("/ack", {}), ("/verdict", {"verdict": "other"}), ("/replay", {"confirm": "yes"})):
        r = client.post(f"/record/{SOURCE.format(13)}{path}", data={"csrf": csrf, **data})
        assert r.status_code == 403 and "read-only" in r.text
    rec = store.get(SOURCE.format(13))
    assert rec is not None and rec.status == "pending" and rec.audit == []


def test_replay_needs_its_confirmation_step(make_client: AppFactory, store: RedisReviewStore) -> None:
    store.record_batch([record_item(14, entity="arm-9")])
    replays = Replays()
    client = make_client(replays=replays)
    confirm = client.get(f"/record/{SOURCE.format(14)}/replay").text
    assert "Yes, replay it" in confirm and "zeroproof.inputs" in confirm and replays.sent == []
    csrf = csrf_of(confirm)
    assert client.post(f"/record/{SOURCE.format(14)}/replay", data={"csrf": csrf}).status_code == 400
    r = client.post(f"/record/{SOURCE.format(14)}/replay", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 200 and "Replayed" in r.text
    [(topic, key, value, headers)] = replays.sent
    assert (topic, key, headers) == (
        "zeroproof.inputs",
        b"arm-9",
        [("zeroproof-replay-of", SOURCE.format(14).encode())],
    )
    assert b'"id":"in-14"' in value
    rec = store.get(SOURCE.format(14))
    assert rec is not None and rec.replays == 1 and rec.audit[-1]["target"] == "zeroproof.inputs:0:1001"


def test_bulk_acknowledge_shows_the_count_and_acks_that_selection(
    make_client: AppFactory, store: RedisReviewStore
) -> None:
    now = time.time()
    store.record_batch([record_item(20 + i, entity="arm-1" if i < 4 else "arm-2", t=now - 10 + i) for i in range(6)])
    client = make_client()
    confirm = client.get("/bulk-ack?entity=arm-1").text
    assert '<span id="bulk-count">4</span>' in confirm
    fields = dict(
        re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', confirm.split('action="/bulk-ack"')[1])
    )
    store.record_batch([record_item(30, entity="arm-1", t=time.time() + 5)])  # arrives after the count was shown
    r = client.post("/bulk-ack", data={**fields, "note": "glitch"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/queue?msg=bulk&n=4"
    assert "Acknowledged 4 records." in client.get(r.headers["location"]).text
    assert store.query(ReviewFilter(entity="arm-1")) == (1, [SOURCE.format(30)])
    assert store.query(ReviewFilter(entity="arm-2"))[0] == 2
    rec = store.get(SOURCE.format(20))
    assert rec is not None and rec.audit[0]["bulk"] is True and "entity arm-1" in rec.audit[0]["note"]
    assert "glitch" in rec.audit[0]["note"]


def test_overview_shows_the_monitor_windows_alerts_dlq_and_pending(
    make_client: AppFactory, store: RedisReviewStore
) -> None:
    settings = load_settings([], short_window=60, long_window=600, bucket=5, eval_interval=5, allowed_lateness=5)
    start = time.time() - 900
    clock = SimClock(start)
    core = OverviewCore(settings.monitor_settings(), 3600.0, clock=clock, monotonic=clock)
    for end, _, msg in generate([Stream("known-pole-1", [Phase(0, 0.1, 0.05)], workers=2)], start, 890.0):
        clock.set(end)
        core.ingest_stats(encode(msg))
        core.tick(caught_up=False)
    core.ingest_dlq(b'{"reason": "invalid_json"}', int(time.time() * 1000))
    store.record_batch([record_item(40), record_item(41)])
    client = make_client(core=core)
    page = client.get("/").text
    view = core.view()
    [v] = view.versions
    assert f'<td class="coverage">{100 * v.short.coverage:.2f}%</td>' in page  # type: ignore[operator]
    assert f'<td class="bottom">{100 * v.long.bottom_rate:.2f}%</td>' in page  # type: ignore[operator]
    assert 'id="pending-total" href="/queue">2</a>' in page and "<svg" in page and "invalid_json" in page
    data = client.get("/overview.json").json()
    assert data["versions"][0]["short_coverage"] == v.short.coverage and data["pending_total"] == 2
    assert data["dlq_total"] == {"invalid_json": 1}
    assert 'data-refresh="5.0"' in page and client.get("/overview/fragment").status_code == 200


def test_token_login_and_basic_auth(make_client: AppFactory, store: RedisReviewStore) -> None:
    store.record_batch([record_item(50)])
    client = make_client(console_host="0.0.0.0", console_token=TOKEN)
    r = client.get("/queue", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/queue.json", follow_redirects=False).status_code == 303
    assert client.get("/static/console.css").status_code == 200
    login = client.get("/login").text
    r = client.post("/login", data={"csrf": csrf_of(login), "token": "wrong-token-0123456789"})
    assert r.status_code == 401
    r = client.post("/login", data={"csrf": csrf_of(login), "token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and client.get("/queue").status_code == 200
    bearer = make_client(console_host="0.0.0.0", console_token=TOKEN)
    assert bearer.get("/queue.json", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200

    basic = make_client(console_host="0.0.0.0", console_user="ana", console_password="pw-of-ana")
    r = basic.get("/queue")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    bad = base64.b64encode(b"ana:nope").decode()
    assert basic.get("/queue", headers={"authorization": f"Basic {bad}"}).status_code == 401
    good = {"authorization": "Basic " + base64.b64encode(b"ana:pw-of-ana").decode()}
    page = basic.get(f"/record/{SOURCE.format(50)}", headers=good).text
    r = basic.post(f"/record/{SOURCE.format(50)}/ack", data={"csrf": csrf_of(page)}, headers=good)
    assert r.status_code == 200
    rec = store.get(SOURCE.format(50))
    assert rec is not None and rec.audit[0]["by"] == "console:ana"  # the authenticated user, not a typed name


def test_no_secret_is_ever_rendered(make_client: AppFactory, store: RedisReviewStore) -> None:
    redis_pw, kafka_pw = "redis-Secret-77", "kafka-Secret-88"
    with redis_server(password=redis_pw) as url:
        secured = RedisReviewStore(__import__("redis").Redis.from_url(url), store.prefix)
        secured.record_batch([record_item(60, ident="s1")])
        client = make_client(
            on=secured,
            redis_url=url,
            console_token=TOKEN,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="u",
            kafka_sasl_password=kafka_pw,
        )
        secrets.register([redis_pw, kafka_pw, TOKEN])
        auth = {"authorization": f"Bearer {TOKEN}"}
        pages = ["/", "/queue", "/overview.json", f"/record/{SOURCE.format(60)}", "/export", "/bulk-ack", "/find?id=s1"]
        for path in pages:
            r = client.get(path, headers=auth)
            assert r.status_code == 200, path
            assert redis_pw not in r.text and kafka_pw not in r.text and TOKEN not in r.text, path
        secured.client.connection_pool.disconnect()
    down = client.get("/queue", headers=auth)  # the server is gone: an error page, still without the password
    assert down.status_code == 503 and "Redis is unavailable" in down.text and redis_pw not in down.text
    secrets.forget_all()
