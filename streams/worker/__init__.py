"""The running worker: the Faust app and its hot path, the judging pipeline, the keyed stages, the kill
watch, the fence writes and the one Kafka seam that records come in and go out through."""
