// Entry point of the keybus JavaScript real-client suite (`node --test` in tests/js).
//
// All case modules are imported here so that the whole suite runs in one process against one
// keybus broker: each module declares its queues at import time (harness.declareQueue), the
// first test starts the broker with all of them, and the root `after` hook stops it by PID.

import "./cases/send.mjs";
import "./cases/settlement.mjs";
import "./cases/modes.mjs";
import "./cases/errors.mjs";
import "./cases/expiry.mjs";
import "./cases/topics.mjs";
import "./cases/sessions.mjs";
import "./cases/topics-extras.mjs";
import "./cases/websocket.mjs";
import "./cases/admin.mjs";
import "./cases/rbac.mjs";
import "./cases/identity.mjs";
import "./cases/console.mjs";
