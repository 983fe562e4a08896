// SendEmailCommand with Simple and Raw content through the relay, as an application on
// the AWS SDK for JavaScript v3 sends: only the endpoint and the keys differ from SES.
// Prints {"simple": MessageId, "raw": MessageId, "refused": error name} as JSON.
import { SESv2Client, SendEmailCommand } from "@aws-sdk/client-sesv2";

const client = new SESv2Client({
  endpoint: process.env.SES_ENDPOINT,
  region: "ap-southeast-2",
  credentials: {
    accessKeyId: process.env.SES_KEY_ID,
    secretAccessKey: process.env.SES_SECRET,
  },
  maxAttempts: 1,
});

const simple = await client.send(new SendEmailCommand({
  FromEmailAddress: "Node App <node@example.com>",
  Destination: { ToAddresses: ["js@example.net"] },
  Content: {
    Simple: {
      Subject: { Data: "From node ✓", Charset: "UTF-8" },
      Body: { Text: { Data: "Hello from the JavaScript SDK" } },
    },
  },
  EmailTags: [{ Name: "sdk", Value: "javascript" }],
}));

const raw = await client.send(new SendEmailCommand({
  Content: {
    Raw: {
      Data: new TextEncoder().encode(
        "From: node@example.com\r\nTo: js-raw@example.net\r\nSubject: raw from node\r\n\r\nRaw body\r\n"),
    },
  },
}));

let refused = null;
try {
  await client.send(new SendEmailCommand({
    FromEmailAddress: "node@unverified.example",
    Destination: { ToAddresses: ["js@example.net"] },
    Content: { Simple: { Subject: { Data: "x" }, Body: { Text: { Data: "x" } } } },
  }));
} catch (error) {
  refused = { name: error.name, status: error.$metadata?.httpStatusCode, message: error.message };
}

console.log(JSON.stringify({ simple: simple.MessageId, raw: raw.MessageId, refused }));
