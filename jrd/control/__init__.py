"""The control socket: jrd's private request/response API, and `jrdctl`.

One request per connection on a unix socket in the runtime dir (mode 0600,
or 0660 for the [control] group; never TCP), one JSON object per line each
way.  The server checks a request against the command table, submits it to
the main loop as `ctx.submit(name, "control", **args)` (the same path as
signals and file events), and answers with the result or one error line.

    protocol.py   framing, answer shapes, jrdctl's exit codes
    commands.py   the command table: one CommandSpec per verb; handlers(target) for the daemon
    server.py     ControlServer, the extension that serves the socket
    client.py     request(), socket discovery, permission advice
    cli.py        jrdctl: its parser and completion made from the table, and how results print
"""
