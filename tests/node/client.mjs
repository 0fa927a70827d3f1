// An independent admatch client: loads proto/admatch/v1/admatch.proto with @grpc/proto-loader,
// calls RecordEvents and Score on the server given as argv[2], and prints one JSON line with
// what it saw. Exits non-zero on any RPC error.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoDir = path.resolve(here, "..", "..", "proto");
const definition = protoLoader.loadSync("admatch/v1/admatch.proto", {
  includeDirs: [protoDir],
  keepCase: true,
  enums: String,
  longs: Number,
  defaults: true,
  oneofs: true,
});
const admatch = grpc.loadPackageDefinition(definition).admatch.v1;
const client = new admatch.AdMatching(process.argv[2], grpc.credentials.createInsecure());
const time = { seconds: Math.floor(Date.parse("2026-03-03T12:15:00Z") / 1000), nanos: 0 };

const candidate = (adId, campaign, bid) => ({
  ad_id: adId, campaign_id: campaign, advertiser_id: "adv_" + adId, category: "food",
  format: "FORMAT_IMAGE", duration_s: 10, bid, pricing: "PRICING_CPM",
  suitability_tier: "RATING_GENERAL",
});

const call = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: Date.now() + 10000 }, (err, reply) =>
      err ? reject(err) : resolve(reply)));

const event = (i) => ({  // impressions 10, 9 and 8 minutes before the request
  type: "TYPE_IMPRESSION", impression_id: "node-" + i,
  time: { seconds: time.seconds - 600 + 60 * i, nanos: 0 }, user_id: "node-user",
  household_id: "node-home", device_id: "node-tv", touchpoint: "TOUCHPOINT_OTT",
  slot: "SLOT_OTT_PAUSE", ad_id: "n1", campaign_id: "node-campaign",
});

try {
  const recorded = await call("RecordEvents", { events: [0, 1, 2, 2].map(event) });
  const scored = await call("Score", {
    request_id: "node-1", time, user: { user_id: "node-user", interests: ["food"] },
    household_id: "node-home", device_id: "node-tv", touchpoint: "TOUCHPOINT_OTT",
    slot: "SLOT_OTT_PAUSE", scene: "SCENE_PERSONAL", content_rating: "RATING_GENERAL",
    local_hour: 20,
    candidates: { items: [candidate("n1", "node-campaign", 30), candidate("n2", "other", 40)] },
  });
  console.log(JSON.stringify({
    recorded: recorded.impressions_recorded, duplicates: recorded.duplicates,
    selected: scored.selected_ad_ids,
    reasons: Object.fromEntries(scored.decisions.map((d) => [d.ad_id, d.reason])),
    model_version: scored.model_version,
  }));
  client.close();
} catch (err) {
  console.error(`rpc failed: ${err.code} ${err.details}`);
  process.exit(1);
}
