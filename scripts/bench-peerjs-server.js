// PeerJS server (npm `peer`) for earshot-bench: listens on 127.0.0.1 on a
// free port and prints its URL first, as earshot does. The concurrent-user
// cap (5,000 by default) is lifted so the idle benchmark can reach 15,000,
// and the alive timeout is longer than any run, so clients need not
// heartbeat.
"use strict";
const { PeerServer } = require("peer");

PeerServer(
  {
    host: "127.0.0.1",
    port: 0,
    concurrent_limit: 1000000,
    alive_timeout: 600000,
  },
  (server) => {
    console.log(`PeerJS is running at http://127.0.0.1:${server.address().port}/`);
  },
);
