"""Another team's consumer of the platform's events, built only from public
packages: Confluent's Kafka client reads a topic from its beginning and the
CloudEvents SDK turns each message (Kafka binding, binary content mode) into
a CloudEvent. Prints one JSON object per event: its attributes and data.

usage: cloudevents_consumer.py --brokers B --topic T --count N [--timeout S]
"""

import argparse
import json
import sys
import time
import uuid

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from confluent_kafka import Consumer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"another-team-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    deadline = time.monotonic() + args.timeout
    read = 0
    try:
        while read < args.count:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"read {read} of {args.count} events in time", file=sys.stderr)
                return 1
            message = consumer.poll(min(left, 1.0))
            if message is None:
                continue
            if message.error():
                print(f"consumer error: {message.error()}", file=sys.stderr)
                continue
            headers = {key: value for key, value in (message.headers() or [])}
            event = from_binary(
                KafkaMessage(headers=headers, key=message.key(), value=message.value()),
                JSONFormat(),
            )
            attributes = {
                name: value.isoformat() if hasattr(value, "isoformat") else value
                for name, value in event.get_attributes().items()
            }
            print(json.dumps({"attributes": attributes, "data": event.get_data()}))
            read += 1
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
