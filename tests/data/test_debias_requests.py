"""The ``debias`` request kind: its ``destinations``, their checks, and hashes that stay as they were without them."""
from __future__ import annotations

import pytest

from editors.requests import EditRequest, RequestError
from iceb.data.request_files import requests_from_data, requests_hash, requests_to_json

DOCTOR = {"kind": "debias", "destinations": ("a female doctor", "a male doctor")}


def test_a_debias_request_needs_two_distinct_destinations_and_no_single_destination():
    r = EditRequest("a doctor", **DOCTOR)
    assert r.destinations == ("a female doctor", "a male doctor") and r.destination == ""
    assert EditRequest("a doctor", kind="debias", destinations=["a", "b"]).destinations == ("a", "b")
    for kw, msg in [({"kind": "debias", "destinations": ("a female doctor",)}, "at least two distinct"),
                    ({"kind": "debias", "destinations": ("x", "x")}, "at least two distinct"),
                    ({"kind": "debias"}, "at least two distinct"),
                    ({"kind": "debias", "destinations": ("x", " ")}, "non-empty"),
                    ({"kind": "debias", "destination": "a nurse", "destinations": ("x", "y")}, "leave destination empty"),
                    ({"kind": "update", "destination": "a nurse", "destinations": ("x", "y")}, "takes no destinations"),
                    ({"kind": "erase", "destinations": ("x", "y")}, "takes no destinations")]:
        with pytest.raises(RequestError, match=msg):
            EditRequest("a doctor", **kw)


def test_towards_gives_the_update_of_each_destination():
    r = EditRequest("a doctor", templates=("a photo of {}", "{}"), seed=7, request_id="d0", **DOCTOR)
    u = r.towards("a male doctor")
    assert (u.kind, u.source, u.destination, u.templates, u.seed, u.request_id, u.destinations) == \
        ("update", "a doctor", "a male doctor", ("a photo of {}", "{}"), 7, "d0", ())
    with pytest.raises(RequestError):
        r.towards("a nurse")
    with pytest.raises(RequestError):
        u.towards("a male doctor")


def test_request_files_carry_destinations_and_read_them_back():
    r = EditRequest("a doctor", seed=5, **DOCTOR)
    data = requests_to_json([r])
    assert data[0]["destinations"] == ["a female doctor", "a male doctor"]
    assert requests_from_data(data).requests == [r]
    # EMCID's spelling, '|'-separated, and the kind implied by the destinations
    back = requests_from_data([{"source": "a nurse", "dests": "a female nurse|a male nurse"}]).requests[0]
    assert back.kind == "debias" and back.destinations == ("a female nurse", "a male nurse")


#: computed on the base commit (9cd8191), before the field existed: requests without destinations and prompts
#: without labels or replicate must hash exactly as they did
SMOKE_3_FINGERPRINT = "e1910c77570cea09"
UPDATE_REQUEST_HASH = "4ce5097e80004689"


def test_fingerprints_and_hashes_of_the_other_kinds_are_unchanged():
    from iceb.tasks import get_task

    assert get_task("smoke").build(3).fingerprint() == SMOKE_3_FINGERPRINT
    assert requests_hash([EditRequest("a cat", "a dog", seed=3)]) == UPDATE_REQUEST_HASH
    assert "destinations" not in requests_to_json([EditRequest("a cat", "a dog")])[0]
    assert "destinations" not in EditRequest("a cat", "a dog").as_dict()
    # a debias request hashes differently from the same source without its destinations
    assert requests_hash([EditRequest("a doctor", **DOCTOR)]) != requests_hash([EditRequest("a doctor", kind="erase")])
