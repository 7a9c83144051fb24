"""The live state of every station, kept from the Kafka topics by the consumer."""
