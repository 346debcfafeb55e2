#!/usr/bin/env python3
"""publish.py - publishes one payq ``payment.create`` command the way the wire
contract (CONTRACT.md, README "The contract") asks, and waits for the reply.

    pip install 'pika>=1.3,<2'
    AMQP_URL=amqp://payq:payq@127.0.0.1:5673/%2F python3 publish.py [BODY]

BODY is the command's JSON object; without it a card payment of 12.50 USD to
the merchant account "shop" is sent. Prints the reply on stdout and exits like
``payq-publish --wait``: 0 succeeded/authorized, 1 failed (a business refusal),
2 usage, 3 rejected, 4 no reply in time (PAYQ_TIMEOUT seconds, default 30),
5 broker unreachable or message refused.

Documentation: this file is kept correct by reading, not by a test (the Node.js
example next to it is the one the test suite runs).
"""
import json
import os
import sys
import time
import uuid

import pika
import pika.exceptions

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
TIMEOUT = float(os.environ.get("PAYQ_TIMEOUT", "30"))
EXCHANGE = "payq.commands"  # durable topic exchange; routing key = command type
COMMAND = "payment.create"
REPLY_TO = "amq.rabbitmq.reply-to"  # RabbitMQ's direct reply-to pseudo-queue


def fail(code, message):
    print(f"publish.py: {message}", file=sys.stderr)
    sys.exit(code)


def parse_body():
    if len(sys.argv) > 2:
        fail(2, "usage: python3 publish.py [BODY-JSON]")
    if len(sys.argv) < 2:
        return {
            "payment_id": f"pay-{uuid.uuid4()}",
            "amount": 1250,  # minor units: 12.50 USD
            "currency": "USD",
            "source": "tok_visa",  # a card token; a customer account id pays from a wallet
            "destination": "shop",  # a merchant account
            "capture": True,
            "description": "payq Python example",
        }
    try:
        body = json.loads(sys.argv[1])
    except ValueError as e:
        fail(2, f"BODY is not JSON: {e}")
    if not isinstance(body, dict):
        fail(2, "BODY must be a JSON object")
    return body


def main():
    body = parse_body()
    # The business id is the permanent idempotency key; a message_id derived
    # from it keeps a retry of this same command recognisable as a retry.
    message_id = f"{COMMAND}:{body.get('payment_id')}"
    correlation_id = str(uuid.uuid4())

    params = pika.URLParameters(AMQP_URL)
    params.client_properties = {"connection_name": "payq-example-python"}
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as e:
        fail(5, f"cannot connect to RabbitMQ (AMQP_URL): {e!r}")
    try:
        channel = connection.channel()
        # Publisher confirms: basic_publish returns once the broker has the
        # message, and raises if it nacks it or (mandatory) returns it.
        channel.confirm_delivery()

        reply = {}

        def on_reply(ch, method, properties, payload):
            if properties.correlation_id == correlation_id:
                reply["body"] = payload

        # Direct reply-to: consume it (auto-ack) on the channel we publish on,
        # before publishing.
        channel.basic_consume(queue=REPLY_TO, on_message_callback=on_reply, auto_ack=True)

        try:
            channel.basic_publish(
                exchange=EXCHANGE,
                routing_key=COMMAND,
                body=json.dumps(body).encode("utf-8"),
                properties=pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=2,  # persistent (pika.DeliveryMode.Persistent)
                    message_id=message_id,
                    correlation_id=correlation_id,
                    reply_to=REPLY_TO,
                ),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            fail(5, f"no queue is bound for {COMMAND} on {EXCHANGE}: start payq-worker once")
        except pika.exceptions.NackError:
            fail(5, "the broker refused the message (basic.nack)")
        except pika.exceptions.ChannelClosedByBroker as e:
            fail(5, f"the broker closed the channel: {e} (does exchange {EXCHANGE} exist?)")
        print(f"publish.py: {COMMAND} confirmed (message_id {message_id}, "
              f"correlation_id {correlation_id})", file=sys.stderr)

        deadline = time.monotonic() + TIMEOUT
        while "body" not in reply:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(4, f"no reply within {TIMEOUT:g} s (is payq-worker running?)")
            connection.process_data_events(time_limit=min(left, 1.0))

        text = reply["body"].decode("utf-8")
        print(text)
        try:
            status = json.loads(text).get("status")
        except ValueError:
            status = None
        if status in ("succeeded", "authorized"):
            return 0
        return 3 if status == "rejected" else 1
    finally:
        if connection.is_open:
            connection.close()


if __name__ == "__main__":
    sys.exit(main())
