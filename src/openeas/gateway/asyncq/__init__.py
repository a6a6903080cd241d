"""EAS's async-queue protocol in the gateway (docs/async.md): what a request to an async service
does (`protocol`), the calls both queues share (`queueops`), their HTTP side (`qhttp`), the
queues of one gateway (`queues`), long-polls and watches (`watch`) and WebSocket frames
(`wsframe`)."""
