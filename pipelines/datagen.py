"""Synthetic data with a known signal, deterministic by seed: ``sluice datagen churn``;
``events``: what the churn data's customers did (their churn shows in it); ``searches``:
shop searches' products and what shoppers did with them (for ranking); ``transactions``:
card transactions with planted fraud (for anomaly detection); ``tickets``: support tickets'
text and their topic (for text classification)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from operators.io.fs import written_whole

PLANS = np.array(["basic", "standard", "premium"])
REGIONS = np.array(["north", "south", "east", "west", "test"])
# the true model: log-odds of churn (documented so tests can check recovery)
CHURN_COEF = {"intercept": -0.4, "tenure": -0.045, "monthly_charges": 0.02,
              "plan=premium": -0.8, "plan=basic": 0.5, "region=south": 0.3}


BLOCK = 65_536


def _blockwise(make_block: Callable[..., Any], rows: int, seed: int, start: int) -> pa.Table:
    """Rows [start, start + rows) of a stream made in fixed blocks, each seeded by
    (seed, block number): the same rows whatever way they are split into files."""
    first, last = start // BLOCK, (start + rows - 1) // BLOCK if rows else start // BLOCK
    blocks = [make_block(np.random.default_rng([seed, b]), BLOCK, b * BLOCK)
              for b in range(first, last + 1)]
    table = pa.concat_tables(blocks)
    return table.slice(start - first * BLOCK, rows)


def churn_table(rows: int, seed: int = 0, start: int = 0) -> pa.Table:
    """Customers with tenure, plan, region, charges (some total_charges null) and churned."""
    return _blockwise(_churn_block, rows, seed, start)


def _churn_block(rng: np.random.Generator, rows: int, start: int) -> pa.Table:
    tenure = rng.integers(0, 73, rows)
    plan_idx = rng.choice(3, rows, p=[0.5, 0.3, 0.2])
    region_idx = rng.choice(5, rows, p=[0.3, 0.3, 0.2, 0.18, 0.02])
    monthly = np.round(20 + 30 * plan_idx + rng.gamma(2.0, 10.0, rows), 2)
    total = np.round(monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.1, rows), 2)
    total_null = rng.random(rows) < 0.02
    logit = (CHURN_COEF["intercept"] + CHURN_COEF["tenure"] * tenure
             + CHURN_COEF["monthly_charges"] * monthly
             + CHURN_COEF["plan=premium"] * (plan_idx == 2)
             + CHURN_COEF["plan=basic"] * (plan_idx == 0)
             + CHURN_COEF["region=south"] * (region_idx == 1))
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    signup = (np.datetime64("2026-11-28") - tenure.astype("timedelta64[M]").astype(
        "timedelta64[D]")).astype("datetime64[D]")
    return pa.table({
        "customer_id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
        "tenure": pa.array(tenure.astype(np.int64)),
        "plan": pa.array(PLANS[plan_idx]),
        "region": pa.array(REGIONS[region_idx]),
        "monthly_charges": pa.array(monthly),
        "total_charges": pa.array(total, mask=total_null),
        "signup_date": pa.array(signup, type=pa.date32()),
        "churned": pa.array(churned),
    })


def numeric_table(rows: int, seed: int = 0, start: int = 0, features: int = 20) -> pa.Table:
    """Float features x0..x{n-1} and a binary label from a known logistic model."""
    coef = np.random.default_rng(seed + 1).standard_normal(features) / np.sqrt(features) * 2

    def block(rng: np.random.Generator, rows: int, start: int) -> pa.Table:
        return _numeric_block(rng, rows, coef)

    return _blockwise(block, rows, seed, start)


def _numeric_block(rng: np.random.Generator, rows: int, coef: np.ndarray) -> pa.Table:
    features = len(coef)
    x = rng.standard_normal((rows, features))
    label = (rng.random(rows) < 1 / (1 + np.exp(-(x @ coef)))).astype(np.int64)
    cols = {f"x{i}": pa.array(x[:, i]) for i in range(features)}
    cols["label"] = pa.array(label)
    return pa.table(cols)


# the event kinds and their shares for customers who stay / churn (churn shows in refunds
# and support calls: what an aggregate of the events can find)
EVENT_KINDS = np.array(["view", "buy", "refund", "support"])
EVENT_SHARES = {0: [0.52, 0.38, 0.04, 0.06], 1: [0.47, 0.28, 0.11, 0.14]}
CHANNELS = np.array(["web", "app", "store"])
EVENTS_CUSTOMERS = 5_000  # the customers of the committed churn sample: ids 0..4999
EVENTS_END = np.datetime64("2026-11-28T00:00:00", "s")


def events_table(rows: int, seed: int = 0, start: int = 0) -> pa.Table:
    """Events (view, buy, refund, support) of the first 5,000 churn customers over the
    90 days before 2026-11-28; customers who churn refund and call support more."""
    churned = churn_table(EVENTS_CUSTOMERS, seed=seed).column("churned").to_numpy()

    def block(rng: np.random.Generator, rows: int, start: int) -> pa.Table:
        customer = rng.integers(0, EVENTS_CUSTOMERS, rows)
        u = rng.random(rows)
        kind = np.where(churned[customer] == 1,
                        np.searchsorted(np.cumsum(EVENT_SHARES[1]), u, side="right"),
                        np.searchsorted(np.cumsum(EVENT_SHARES[0]), u, side="right"))
        kind = np.minimum(kind, len(EVENT_KINDS) - 1)
        amount = np.round(rng.gamma(2.0, 25.0, rows), 2)
        priced = (kind == 1) | (kind == 2)
        ts = EVENTS_END - rng.integers(1, 90 * 86_400, rows).astype("timedelta64[s]")
        return pa.table({
            "customer_id": pa.array(customer.astype(np.int64)),
            "kind": pa.array(EVENT_KINDS[kind]),
            "amount": pa.array(amount, mask=~priced),
            "channel": pa.array(CHANNELS[rng.integers(0, 3, rows)]),
            "ts": pa.array(ts, pa.timestamp("s")),
        })

    return _blockwise(block, rows, seed, start)


SEARCH_GRADES = ("skipped", "clicked", "added to cart", "bought")


def searches_table(rows: int, seed: int = 0, start: int = 0) -> pa.Table:
    """Shop searches and the products each showed (10 to 40, a search's rows one after
    another, ids from its first row's number): text match, price, rating (some null),
    reviews, whether promoted, and the grade of what the shopper did (0 skipped, 1
    clicked, 2 added to cart, 3 bought). Within a search, better matched, better rated,
    more reviewed and cheaper products do better; being promoted does nothing."""

    def block(rng: np.random.Generator, rows: int, start: int) -> pa.Table:
        sizes = rng.integers(10, 41, rows // 10 + 1)
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        search = np.repeat(start + first, sizes)[:rows]
        text = rng.beta(2.0, 5.0, rows)
        price = np.round(np.exp(rng.normal(3.5, 0.8, rows)), 2)
        rating = np.round(np.clip(rng.normal(4.0, 0.6, rows), 1.0, 5.0), 1)
        reviews = rng.negative_binomial(1, 0.02, rows)
        promoted = rng.random(rows) < 0.1
        utility = (4.0 * text + 0.8 * (rating - 4.0) + 0.3 * np.log1p(reviews)
                   - 0.5 * np.log(price) + 0.6 * rng.standard_normal(rows))
        # the grade by the product's utility against the others of its search
        _, at = np.unique(search, return_inverse=True)
        mean = np.bincount(at, utility) / np.bincount(at)
        grade = np.digitize(utility - mean[at], [0.4, 1.0, 1.6]).astype(np.int64)
        return pa.table({
            "search_id": pa.array(search.astype(np.int64)),
            "text_match": pa.array(np.round(text, 4)),
            "price": pa.array(price),
            "rating": pa.array(rating, mask=rng.random(rows) < 0.05),
            "reviews": pa.array(reviews.astype(np.int64)),
            "promoted": pa.array(promoted),
            "grade": pa.array(grade),
        })

    return _blockwise(block, rows, seed, start)


FRAUD_SHARE = 0.005  # the share of transactions planted as fraud


def transactions_table(rows: int, seed: int = 0, start: int = 0) -> pa.Table:
    """Card transactions: amount, hour of day, distance from home, the merchant's risk
    score and items; about half a percent are fraud (``is_fraud``), planted away from
    the others: large amounts far from home, at night, at risky merchants (each fraud
    shows two or three of those, so no one column gives it away)."""

    def block(rng: np.random.Generator, rows: int, start: int) -> pa.Table:
        amount = np.exp(rng.normal(3.2, 0.9, rows))
        hour = np.clip(rng.normal(14.0, 4.0, rows), 0.0, 23.99)
        distance = rng.gamma(1.5, 6.0, rows)
        risk = rng.beta(2.0, 8.0, rows)
        items = rng.poisson(2.0, rows) + 1
        fraud = rng.random(rows) < FRAUD_SHARE
        shown = fraud[:, None] & (rng.random((rows, 4)) < 0.7)
        amount = np.where(shown[:, 0], amount * rng.uniform(8, 30, rows), amount)
        hour = np.where(shown[:, 1], rng.uniform(1.0, 5.0, rows), hour)
        distance = np.where(shown[:, 2], distance + rng.uniform(150, 900, rows), distance)
        risk = np.where(shown[:, 3], rng.uniform(0.6, 1.0, rows), risk)
        return pa.table({
            "transaction_id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
            "amount": pa.array(np.round(amount, 2)),
            "hour": pa.array(np.round(hour, 2)),
            "distance_km": pa.array(np.round(distance, 1)),
            "merchant_risk": pa.array(np.round(risk, 3)),
            "items": pa.array(items.astype(np.int64)),
            "is_fraud": pa.array(fraud.astype(np.int64)),
        })

    return _blockwise(block, rows, seed, start)


TOPICS = {
    "billing": ["refund", "charged", "twice", "invoice", "payment", "card", "bill", "price",
                "subscription", "overcharged", "receipt", "money"],
    "delivery": ["parcel", "courier", "late", "tracking", "address", "package", "arrived",
                 "shipping", "delivered", "box", "damaged", "week"],
    "bug": ["crash", "crashes", "error", "app", "freezes", "update", "screen", "button",
            "broken", "slow", "loading", "bug"],
    "account": ["password", "login", "reset", "email", "locked", "account", "username",
                "verification", "code", "sign", "profile", "access"],
}
"""Each topic's own words; a ticket also draws words every topic uses."""
COMMON = ["the", "my", "i", "it", "is", "and", "to", "please", "help", "again", "not",
          "still", "why", "hello", "thanks", "today", "order", "was", "have", "a", "this",
          "can", "you", "your", "since", "yesterday", "urgent", "support"]


def tickets_table(rows: int, seed: int = 0, start: int = 0) -> pa.Table:
    """Support tickets: an id, the customer (of the churn sample), the text (4 to 24 words,
    some capitalised, with punctuation), and its topic: billing, delivery, bug or account.
    About a third of a ticket's words are its topic's own, the rest common words and
    other topics' (so no one word gives a ticket's topic away; a few tickets are mostly
    another topic's words)."""
    topics = sorted(TOPICS)
    marks = np.array(["", ".", "!", "?", "!!", "..."])

    def block(rng: np.random.Generator, rows: int, start: int) -> pa.Table:
        topic = rng.integers(0, len(topics), rows)
        lengths = rng.integers(4, 25, rows)
        texts = []
        for t, n in zip(topic, lengths, strict=True):
            own = rng.random(n) < 0.33
            other = rng.random(n) < 0.2
            words = []
            for is_own, is_other in zip(own, other, strict=True):
                if is_own:
                    words.append(TOPICS[topics[t]][rng.integers(0, 12)])
                elif is_other:
                    words.append(TOPICS[topics[rng.integers(0, len(topics))]][rng.integers(0, 12)])
                else:
                    words.append(COMMON[rng.integers(0, len(COMMON))])
            if rng.random() < 0.5:
                words[0] = words[0].capitalize()
            cut = int(rng.integers(1, n)) if n > 6 and rng.random() < 0.4 else n
            text = " ".join(words[:cut]) + (", " + " ".join(words[cut:]) if cut < n else "")
            texts.append(text + marks[rng.integers(0, len(marks))])
        return pa.table({
            "ticket_id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
            "customer_id": pa.array(rng.integers(0, 5000, rows).astype(np.int64)),
            "text": pa.array(texts, pa.string()),
            "topic": pa.array(np.array(topics)[topic]),
        })

    return _blockwise(block, rows, seed, start)


GENERATORS = {"churn": churn_table, "numeric": numeric_table, "events": events_table,
              "searches": searches_table, "transactions": transactions_table,
              "tickets": tickets_table}


PART = re.compile(r"^part-\d{5}\.parquet$")  # the files generate writes


def foreign_files(out: str | Path) -> list[str]:
    """The Parquet files in ``out`` that generate did not write (it replaces its own):
    rows that a read of ``out`` would mix with the generated ones."""
    if not os.path.isdir(out):
        return []
    found = []
    for folder, dirs, names in os.walk(out):  # a read of out takes its folders' files too
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]  # as a read skips them
        below = os.path.relpath(folder, out)
        found += [name if below == "." else os.path.join(below, name) for name in names
                  if name.endswith(".parquet") and not name.startswith(("_", "."))
                  and not (below == "." and PART.match(name))]
    return sorted(found)


def generate(kind: str, rows: int, out: str | Path, *, files: int = 1, seed: int = 0,
             row_group_rows: int = 100_000) -> list[str]:
    """Write ``rows`` rows of ``kind`` as ``files`` Parquet files under ``out``, in place
    of those an earlier generate wrote there (more files then are not left behind)."""
    make = GENERATORS[kind]
    os.makedirs(out, exist_ok=True)
    earlier = [os.path.join(out, name) for name in os.listdir(out) if PART.match(name)]
    written = []
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for i in range(files):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        path = os.path.join(out, f"part-{i:05d}.parquet")
        with written_whole(path, durable=False) as staging:  # regenerated at will
            pq.write_table(make(hi - lo, seed=seed, start=lo), staging,
                           row_group_size=row_group_rows)
        written.append(path)
    for path in set(earlier) - set(written):
        os.remove(path)
    return written
