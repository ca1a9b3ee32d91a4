"""What PetClinic must answer, wherever it runs (a host JVM, or the image under QEMU): its HTML pages, its
JSON, the write paths (JSON and the HTML form) with their transaction, and its error statuses.

The seeded data is the original PetClinic's (owners 1-10, pets 1-13, visits 1-4, six vets) plus generated
owners up to ``--owners``; the writes go to pet 7 (Samantha, owner 6 Jean Coleman).
"""

from __future__ import annotations

import json
import re
from typing import Any

from firecracer.image.check import http_fetch


class Client:
    """HTTP to the app on 127.0.0.1:port; every call returns (status, content type, body)."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port = port
        self.timeout = timeout

    def get(self, path: str) -> tuple[int, str, bytes]:
        return http_fetch(self.port, path, timeout=self.timeout)

    def json(self, path: str) -> Any:
        status, ctype, body = self.get(path)
        assert status == 200 and ctype.startswith("application/json"), (path, status, ctype, body[:200])
        return json.loads(body)

    def post(self, path: str, body: str, ctype: str = "application/json") -> tuple[int, str, bytes]:
        return http_fetch(self.port, path, timeout=self.timeout, method="POST", body=body.encode(),
                          content_type=ctype)

    def delete(self, path: str) -> int:
        return http_fetch(self.port, path, timeout=self.timeout, method="DELETE")[0]


def check_reads(c: Client, owners: int) -> None:
    """The pages and the JSON show the seeded data."""
    owner = c.json("/api/owners/6")
    assert owner["lastName"] == "Coleman" and {p["name"] for p in owner["pets"]} == {"Max", "Samantha"}
    samantha = next(p for p in owner["pets"] if p["name"] == "Samantha")
    assert samantha["type"]["name"] == "cat" and samantha["birthDate"] == "2012-09-04"
    assert [v["description"] for v in samantha["visits"]][:2] == ["rabies shot", "spayed"]
    status, ctype, body = c.get("/owners?lastName=Davis")
    assert status == 200 and ctype.startswith("text/html")
    assert b"Betty Davis" in body and b"Harold Davis" in body and b"Franklin" not in body
    status, _, body = c.get("/owners/6")
    assert status == 200 and b"Jean Coleman" in body and b"Samantha" in body and b"rabies shot" in body
    status, _, body = c.get("/vets")
    assert status == 200 and b"Helen Leary" in body and b"radiology" in body
    assert c.get("/")[0] == c.get("/owners/find")[0] == 200
    stats = c.json("/api/stats")
    assert stats["owners"] >= owners and stats["vets"] == 6 and stats["visits"] >= 4
    types = {t["name"] for t in c.json("/api/pettypes")}
    assert types == {"bird", "cat", "dog", "hamster", "lizard", "snake"}
    assert len(c.json("/api/vets")) == 6
    assert c.json(f"/api/owners/{owners}")["pets"], "generated owners have pets"
    # the JSON list is paged like the HTML one: page 2 of the Davis owners starts where page 1 ended
    davis = c.json("/api/owners?lastName=Davis&size=1000")
    assert len(davis) == stats_count(c, "Davis") and {o["lastName"] for o in davis} == {"Davis"}
    assert {2, 4} <= {o["id"] for o in davis}
    page2 = c.json("/api/owners?lastName=Davis&page=2&size=1")
    assert [o["id"] for o in page2] == [davis[1]["id"]]
    assert len(c.json("/api/owners")) == min(50, owners)


def stats_count(c: Client, last_name: str) -> int:
    """Owners with this last-name prefix, as the HTML list counts them."""
    status, _, body = c.get(f"/owners?lastName={last_name}")
    m = re.search(rb"(\d+) owners found", body)
    assert status == 200 and m is not None
    return int(m.group(1))


def check_writes(c: Client) -> None:
    """JSON and form writes, each one transaction: the pet's visit counter moves with its visits."""
    before = c.json("/api/pets/7")
    assert before["visitCount"] == len(before["visits"])
    status, _, body = c.post("/api/pets/7/visits", '{"date":"2024-01-02","description":"checkup"}')
    assert status == 201 and json.loads(body)["petId"] == 7
    pet = c.json("/api/pets/7")
    assert pet["visitCount"] == len(pet["visits"]) == before["visitCount"] + 1
    assert any(v["date"] == "2024-01-02" and v["description"] == "checkup" for v in pet["visits"])

    # a visit the database refuses: 400, and the counter update before it was rolled back
    status, _, body = c.post("/api/pets/7/visits", '{"description":"' + "x" * 300 + '"}')
    assert status == 400 and b"rolled back" in body
    pet = c.json("/api/pets/7")
    assert pet["visitCount"] == len(pet["visits"]) == before["visitCount"] + 1

    # HTML: the form, its POST (redirect to the owner), the visit on the owner's page
    assert c.get("/owners/6/pets/7/visits/new")[0] == 200
    form = "application/x-www-form-urlencoded"
    status, _, _ = c.post("/owners/6/pets/7/visits/new", "date=2024-03-04&description=dental+cleaning", form)
    assert status == 302
    status, _, body = c.get("/owners/6")
    assert status == 200 and b"2024-03-04" in body and b"dental cleaning" in body
    status, _, body = c.post("/owners/6/pets/7/visits/new", "date=2024-03-04&description=", form)
    assert status == 200 and b"description: required" in body

    status, _, body = c.post("/api/owners", '{"firstName":"Ada","lastName":"Lovelace","address":"1 St",'
                             '"city":"London","telephone":"0123"}')
    assert status == 201
    new_id = json.loads(body)["id"]
    assert c.json(f"/api/owners/{new_id}")["lastName"] == "Lovelace"
    status, _, body = c.post(f"/api/owners/{new_id}/pets",
                             '{"name":"Rex","birthDate":"2020-01-01","type":"dog"}')
    assert status == 201 and json.loads(body)["type"]["name"] == "dog"


def check_errors(c: Client, owners: int) -> None:
    assert c.get("/api/owners/99999999")[0] == 404
    assert c.get("/owners/x")[0] == 400
    assert c.get("/nope")[0] == 404
    assert c.delete("/api/vets") == 405
    assert c.post("/api/owners/1/pets", '{"name":"Rex","birthDate":"2020-01-01","type":"dragon"}')[0] == 400
    assert c.post("/api/owners", '{"firstName":1}')[0] == 400
    assert c.post("/api/pets/1/visits", "{not json")[0] == 400
    assert c.get("/api/owners?size=0")[0] == c.get("/api/owners?page=0")[0] == 400
