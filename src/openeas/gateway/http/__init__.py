"""The gateway's HTTP side: the client connection (`proxy.ClientConnection`: parsing, flow
control, deadlines, pipelining), the per-request `exchange.Exchange` with replicas (attempts,
resends, timers), the upstream pool (`pool`), request heads (`head`), guards and limits
(`guard`), holding requests (`activator`), retry decisions (`retry`) and the gateway's own answers
(`local`)."""
