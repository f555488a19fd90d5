// The live stream's connection off the page's thread: streamcore.js in a worker, so that the
// page receives parsed frames and, on the Overview, one digest of the fleet's values every
// 250 ms instead of parsing thousands of frames a second itself.

import { streamer } from "./streamcore.js";

const handle = streamer((message, transfer) => self.postMessage(message, transfer || []));
self.onmessage = ({ data }) => handle(data);
