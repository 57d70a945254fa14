// Reads a JSON array of UI message stream chunks on stdin, feeds them to the AI SDK's
// readUIMessageStream, and prints {errors, message} as JSON: the message the SDK built.
import { readUIMessageStream } from "ai";

const input = await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (piece) => (text += piece));
  process.stdin.on("end", () => resolve(text));
});
const chunks = JSON.parse(input);
const errors = [];
const stream = new ReadableStream({
  start(controller) {
    for (const chunk of chunks) controller.enqueue(chunk);
    controller.close();
  },
});
let message = null;
try {
  for await (const snapshot of readUIMessageStream({ stream, onError: (e) => errors.push(String(e)) })) {
    message = snapshot;
  }
} catch (error) {
  errors.push(String(error));
}
process.stdout.write(JSON.stringify({ errors, message }));
