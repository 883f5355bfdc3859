"""The orders service: ``POST /orders`` sends an order to the ``orders`` queue with
``DefaultAzureCredential`` (a managed identity from keybus's token service, no connection
string); ``POST /hooks/orders`` receives the orders ``keybus connect`` pushes, after checking
the bearer token's signature (keybus's published keys), issuer and audience.

Configuration (environment): ``KEYBUS_HOST`` (localhost), ``KEYBUS_AMQPS_PORT`` (5671),
``KEYBUS_CA_FILE`` (keybus-data/tls/ca.pem), ``KEYBUS_JWKS_URL``
(http://127.0.0.1:5300/contoso/discovery/v2.0/keys), ``KEYBUS_ISSUER``
(https://localhost:5443/contoso/v2.0), ``HOOK_AUDIENCE`` (api://orders-hook), and the managed
identity's ``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER``.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Dict, List, Optional

import jwt
from azure.identity import DefaultAzureCredential
from azure.servicebus import ServiceBusClient, ServiceBusMessage, TransportType
from fastapi import FastAPI, Header, HTTPException, Request, Response

HOST = os.environ.get("KEYBUS_HOST", "localhost")
AMQPS_PORT = int(os.environ.get("KEYBUS_AMQPS_PORT", "5671"))
CA_FILE = os.environ.get("KEYBUS_CA_FILE", "keybus-data/tls/ca.pem")
JWKS_URL = os.environ.get("KEYBUS_JWKS_URL", "http://127.0.0.1:5300/contoso/discovery/v2.0/keys")
ISSUER = os.environ.get("KEYBUS_ISSUER", "https://localhost:5443/contoso/v2.0")
AUDIENCE = os.environ.get("HOOK_AUDIENCE", "api://orders-hook")
QUEUE = "orders"

app = FastAPI(title="orders")
_keys = jwt.PyJWKClient(JWKS_URL)
_received: List[Dict[str, Any]] = []
_lock = threading.Lock()


def _client() -> ServiceBusClient:
    return ServiceBusClient(
        HOST,
        DefaultAzureCredential(),
        custom_endpoint_address=f"sb://{HOST}:{AMQPS_PORT}",
        connection_verify=CA_FILE,
        transport_type=TransportType.Amqp,
    )


@app.post("/orders")
def create_order(order: Dict[str, Any]) -> Dict[str, str]:
    order_id = str(order.get("id") or uuid.uuid4())
    with _client() as client, client.get_queue_sender(QUEUE) as sender:
        sender.send_messages(
            ServiceBusMessage(
                _json(order | {"id": order_id}),
                message_id=order_id,
                content_type="application/json",
                subject="order.created",
            )
        )
    return {"id": order_id}


def _verify(authorization: Optional[str]) -> Dict[str, Any]:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(status_code=401, detail="a bearer token is required")
    try:
        key = _keys.get_signing_key_from_jwt(token).key
        return jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
    except jwt.PyJWTError as e:
        raise HTTPException(status_code=401, detail=f"invalid token: {e}") from None


@app.post("/hooks/orders")
async def order_hook(request: Request, authorization: Optional[str] = Header(default=None)) -> Response:
    claims = _verify(authorization)
    order = await request.json()
    if not isinstance(order, dict) or float(order.get("total", 0)) < 0:
        # 422: the connector dead-letters the message (reason PushRejected).
        raise HTTPException(status_code=422, detail="an order's total cannot be negative")
    with _lock:
        _received.append({"order": order, "ce_id": request.headers.get("ce-id"), "pusher": claims.get("appid")})
    return Response(status_code=204)


@app.get("/hooks/orders")
def received() -> List[Dict[str, Any]]:
    with _lock:
        return list(_received)


def _json(v: Any) -> str:
    import json

    return json.dumps(v)
