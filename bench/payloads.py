"""Room message payloads for the benchmark: the ~100-byte one of the other scenarios, and a ~2 KB one.

The 2 KB one is a realistic message with metadata, as a chat or collaboration app sends it: two
sentences of text and the same text as rich-text blocks with a mention, its author's profile,
reactions with who reacted, an image attachment with its thumbnail, the thread, read receipts,
client metadata and a permalink. Within a message the same few users recur (author, mention,
reactions, receipts), as they do in a channel; ids, sizes, times and the text (sentences made
from templates and word lists) differ from message to message: each is made when it is sent,
so a compressor that keeps its context between messages (python-socketio's) finds no message
repeated whole, only what such messages share. permessage-deflate without context takeover
(jetsock's) compresses each message on its own, so no message helps another.
"""

from __future__ import annotations

import json
import random
from typing import Any

PAD = "x" * 70
"""Makes `data` about 100 bytes, as the issue's fan-out asks (bench.clients publishes the same)."""

_TEMPLATES = [
    "Can someone take a look at the failing {thing} on the {branch} branch before the {meeting}?",
    "I pushed a fix for the {bug} bug, the {page} page was off by {n} {unit} for some users.",
    "The new {feature} is live for {n} percent of users, {metric} looks {trend} so far.",
    "Reminder: the {meeting} moved to {day} at {hour}, same room as last week.",
    "Does anyone know why {system} ran out of {resource} again this {time}?",
    "Thanks, that worked! I had the wrong {thing} set in my local config.",
    "We should pin the version of the {library} until they fix the {bug} issue.",
    "Here is the summary of the call with {customer}, the main ask is {feature}.",
    "Latency on the {page} endpoint went up {n} percent after the last deploy, rolling it back now.",
    "Could we move the {meeting} to {day}? Half of the team is at the conference.",
    "The {platform} app crashes when the user opens the {page} page twice.",
    "I added tests for the {bug} cases we discussed, the coverage report is in PR {pr}.",
    "Heads up: the certificate for {system} expires in {n} days, the renewal is scheduled.",
    "Nice work on the {page} dashboard, the new charts make the {metric} much easier to read.",
    "I will be out {day} afternoon, ping me on the phone if anything about {system} comes up.",
]
_FILL = {
    "thing": ["build", "migration", "nightly job", "environment variable", "feature flag", "deploy script"],
    "branch": ["release", "main", "hotfix", "mobile", "billing"],
    "meeting": ["standup", "design review", "retro", "planning", "incident review"],
    "bug": ["timezone", "rounding", "pagination", "cache", "login redirect", "CSV export"],
    "page": ["invoice", "search", "checkout", "settings", "reports", "onboarding"],
    "unit": ["day", "hour", "cent", "item"],
    "feature": ["onboarding flow", "bulk export", "dark mode", "SSO login", "usage alerts"],
    "metric": ["conversion", "retention", "error rate", "weekly revenue", "signups"],
    "trend": ["flat", "up a little", "down slightly", "much better"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
    "hour": ["ten", "two", "three", "half past four"],
    "system": ["the staging database", "the API gateway", "the search cluster", "the queue workers"],
    "resource": ["connections", "disk", "memory", "file descriptors"],
    "time": ["morning", "night", "weekend"],
    "library": ["payment SDK", "PDF renderer", "HTTP client", "ORM"],
    "customer": ["Acme", "Globex", "Initech", "Umbrella", "Hooli"],
    "platform": ["iOS", "Android", "desktop"],
}


def _sentence(rng: random.Random) -> str:
    template = rng.choice(_TEMPLATES)
    values = {key: rng.choice(options) for key, options in _FILL.items()}
    return template.format(n=rng.randrange(2, 60), pr=f"#{rng.randrange(1000, 9999)}", **values)


_NAMES = ["Ada Park", "Ben Okafor", "Chloé Martin", "Dmitri Ivanov", "Elif Yilmaz", "Farah Haddad", "Gus Lind"]
_EMOJI = ["+1", "eyes", "tada", "heart", "rocket", "white_check_mark", "thinking_face"]
_CLIENTS = ["web/5.32.1 (Chrome 126; macOS 14.5)", "ios/5.31.0 (iPhone15,2; iOS 17.5)", "android/5.30.4 (Pixel 8)"]


_ROSTER = [
    {
        "id": f"U0{4217 + 97 * i:05d}",
        "name": name,
        "handle": name.split()[0].lower(),
        "avatar": f"https://cdn.example.com/avatars/{name.split()[0].lower()}-72.png",
        "tz": tz,
    }
    for i, (name, tz) in enumerate(
        zip(
            _NAMES,
            [
                "Europe/Paris",
                "Africa/Lagos",
                "Europe/Paris",
                "Europe/Berlin",
                "Europe/Istanbul",
                "Asia/Dubai",
                "America/Chicago",
            ],
            strict=True,
        )
    )
]
"""A channel's members: the same few users recur within a message (author, mentions, reactions, receipts)."""


def message_2kb(rng: random.Random, target: int = 2048) -> dict[str, Any]:
    """One ~2 KB message with metadata (its JSON within 5% of `target` bytes)."""
    sent = 1_718_000_000_000 + rng.randrange(10**9)
    members = rng.sample(_ROSTER, 5)
    author = members[0]
    text = f"{_sentence(rng)} {_sentence(rng)}"
    words = text.split(" ")
    cut = len(words) // 2
    body: dict[str, Any] = {
        "id": f"msg_{rng.randrange(16**12):012x}",
        "kind": "chat.message",
        "channel": {"id": "C07RELEASES", "name": "eng-releases", "private": False},
        "author": author,
        "text": text,
        "blocks": [
            {
                "type": "rich_text",
                "elements": [
                    {"type": "text", "text": " ".join(words[:cut]) + " "},
                    {"type": "user", "user_id": members[1]["id"]},
                    {"type": "text", "text": " " + " ".join(words[cut:])},
                ],
            }
        ],
        "mentions": [members[1]["id"]],
        "reactions": [
            {"name": emoji, "users": [m["id"] for m in rng.sample(members, k)], "count": k}
            for emoji, k in zip(rng.sample(_EMOJI, 3), (3, 2, 1), strict=True)
        ],
        "attachments": [
            {
                "type": "image",
                "name": f"screenshot-{rng.randrange(10**4):04d}.png",
                "mimetype": "image/png",
                "url": f"https://files.example.com/T0HQ/{rng.randrange(16**10):010x}/screenshot.png",
                "size": rng.randrange(40_000, 900_000),
                "width": 1280,
                "height": 800,
                "thumb": {
                    "url": f"https://files.example.com/T0HQ/{rng.randrange(16**10):010x}/thumb_360.png",
                    "width": 360,
                    "height": 225,
                },
            }
        ],
        "thread": {
            "id": f"thr_{rng.randrange(16**10):010x}",
            "reply_count": rng.randrange(1, 40),
            "reply_users": [m["id"] for m in members[1:4]],
            "latest_reply": sent - rng.randrange(3_600_000),
        },
        "read_by": [{"user": m["id"], "at": sent + rng.randrange(60_000)} for m in members[1:]],
        "edited": None,
        "pinned": False,
        "client": {"agent": rng.choice(_CLIENTS), "locale": rng.choice(["en-US", "fr-FR", "de-DE"])},
        "permalink": f"https://chat.example.com/archives/C07RELEASES/p{sent}",
        "sent_at": sent,
    }
    size = len(json.dumps(body))
    while size < target * 0.95:  # one more member's profile on the message (as "participants") until it is ~2 KB
        body.setdefault("participants", []).append(_ROSTER[len(body.get("participants", [])) % len(_ROSTER)])
        size = len(json.dumps(body))
    return body


POOL_SIZE = 1024
"""2 KB messages made once per process and sent in turn: a message comes back only after 1,023 others,
far past a compressor's 32 KiB window (about 15 of them), and making one costs ~0.1 ms, too much per send."""
_pool: list[dict[str, Any]] = []
_turn = 0


def body(kind: str, rng: random.Random | None = None) -> dict[str, Any]:
    """The payload's fields besides the bench's own `t` and `n`: "100B" (a pad) or "2KB" (the pool's next,
    or a new one from `rng`)."""
    global _turn
    if kind == "100B":
        return {"p": PAD}
    if kind != "2KB":
        raise ValueError(f"unknown payload {kind!r}")
    if rng is not None:
        return message_2kb(rng)
    if not _pool:
        seeded = random.Random(17)
        _pool.extend(message_2kb(seeded) for _ in range(POOL_SIZE))
    _turn = (_turn + 1) % POOL_SIZE
    return _pool[_turn]
