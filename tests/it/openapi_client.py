"""Uses the client openapi-python-client generated from docs/openapi.json
(importable as promo_client) against a running `promo serve`, as a team
that generates its clients would: a lookup of a present id and of an
absent one, a batch, and an upload of a feed, raw and as a form.

Usage: openapi_client.py PUBLIC_URL ADMIN_URL TOKEN PRESENT_ID ABSENT_ID FEED
Prints one JSON line of what it saw; exits non-zero on any surprise.
"""

import io
import json
import sys

from promo_client import AuthenticatedClient, Client
from promo_client.api.admin import upload
from promo_client.api.public import batch_promotions, get_promotion
from promo_client.models import BatchRequest, BatchResponse, Error, Promotion, UploadFilesBody, UploadResult
from promo_client.types import File


def main():
    public, admin, token, present, absent, feed = sys.argv[1:]
    seen = {}
    client = Client(base_url=public, raise_on_unexpected_status=True)

    hit = get_promotion.sync_detailed(present, client=client)
    assert hit.status_code == 200, hit
    assert isinstance(hit.parsed, Promotion), hit.parsed
    assert str(hit.parsed.id) == present, hit.parsed
    seen["hit"] = hit.parsed.to_dict()

    miss = get_promotion.sync_detailed(absent, client=client)
    assert miss.status_code == 404, miss
    assert isinstance(miss.parsed, Error), miss.parsed
    seen["miss"] = miss.parsed.error

    batch = batch_promotions.sync_detailed(client=client, body=BatchRequest(ids=[present, absent, "nope"]))
    assert batch.status_code == 200, batch
    assert isinstance(batch.parsed, BatchResponse), batch.parsed
    assert [str(p.id) for p in batch.parsed.promotions] == [present], batch.parsed
    assert batch.parsed.missing == [absent] and batch.parsed.invalid == ["nope"], batch.parsed
    seen["batch"] = batch.parsed.to_dict()

    authed = AuthenticatedClient(base_url=admin, token=token, raise_on_unexpected_status=True)
    data = open(feed, "rb").read()
    generations = []
    for body in (File(payload=io.BytesIO(data), file_name="feed.csv"),
                 UploadFilesBody(file=File(payload=io.BytesIO(data), file_name="feed.csv",
                                           mime_type="text/csv"))):
        up = upload.sync_detailed(client=authed, body=body, force="true")
        assert up.status_code == 200, up
        assert isinstance(up.parsed, UploadResult), up.parsed
        generations.append(up.parsed.generation)
    seen["uploads"] = generations

    wrong = AuthenticatedClient(base_url=admin, token=token + "x")
    refused = upload.sync_detailed(client=wrong, body=File(payload=io.BytesIO(data), file_name="f.csv"))
    assert refused.status_code == 401, refused
    seen["wrong_token"] = refused.status_code
    print(json.dumps(seen, default=str))


if __name__ == "__main__":
    main()
