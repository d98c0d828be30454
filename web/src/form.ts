// The job form, built from a pipeline's input JSON Schema (GET /v1/pipelines): a file input
// (x-file) is an upload, an enum a select, a number an input with its range, a boolean a
// checkbox, a string a text box; defaults are filled and required fields marked. What the form
// cannot show as a control (lists, objects) is a JSON box of its own.

export interface FileRule { contentTypes: string[]; maxBytes: number }
export interface PipelineInfo {
  name: string;
  description: string;
  streams: boolean;
  inputSchema: Schema;
  files: Record<string, FileRule>;
  limits: { quantity: string; field?: string | null; max: number; unit: string }[];
}
export interface Schema {
  type?: string;
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  anyOf?: Schema[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  multipleOf?: number;
  minLength?: number;
  maxLength?: number;
  properties?: Record<string, Schema>;
  required?: string[];
  $ref?: string;
  "x-file"?: FileRule;
}

// What one control gives: a value for the inputs, or undefined to leave the input out (its
// default applies). Uploads happen here, when the form is sent.
type Read = (upload: (file: File) => Promise<string>) => Promise<unknown>;
export interface Form { pipeline: string; read: (upload: (file: File) => Promise<string>) => Promise<Record<string, unknown>> }

// `X | None` is anyOf [X, null]: the control is X's, and may be left empty.
function flatten(prop: Schema): { node: Schema; nullable: boolean } {
  const members = prop.anyOf ?? [];
  const others = members.filter((m) => m.type !== "null");
  if (members.length && others.length === 1 && others.length < members.length) {
    const { anyOf: _, ...rest } = prop;
    return { node: { ...others[0], ...rest }, nullable: true };
  }
  return { node: prop, nullable: false };
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

class FieldError extends Error {
  code = "invalid_inputs";
}

function control(name: string, node: Schema, required: boolean, nullable: boolean): { el: HTMLElement; read: Read } {
  const fail = (why: string): never => { throw new FieldError(`inputs.${name}: ${why}`); };
  const file = node["x-file"];
  if (file) {
    const input = document.createElement("input");
    input.type = "file";
    input.accept = file.contentTypes.join(",");
    input.required = required;
    return {
      el: input,
      read: async (upload) => {
        const chosen = input.files?.[0];
        if (!chosen) return required ? fail("choose a file") : undefined;
        if (chosen.size > file.maxBytes) fail(`the file is ${chosen.size} bytes; the limit is ${file.maxBytes}`);
        return upload(chosen);
      },
    };
  }
  if (node.enum) {
    const select = document.createElement("select");
    const values = node.enum;
    if (!required && (nullable || node.default === undefined || node.default === null)) {
      select.add(new Option("(default)", ""));
    }
    // Each option's value is the choice as JSON: 2 and "2" stay apart.
    for (const v of values) select.add(new Option(String(v), JSON.stringify(v), false, same(v, node.default)));
    return {
      el: select,
      read: async () => {
        if (select.value === "") return undefined;
        const value: unknown = JSON.parse(select.value);
        return same(value, node.default) ? undefined : value;
      },
    };
  }
  if (node.type === "integer" || node.type === "number") {
    const input = document.createElement("input");
    input.type = "number";
    const low = node.minimum ?? node.exclusiveMinimum;
    const high = node.maximum ?? node.exclusiveMaximum;
    if (low !== undefined) input.min = String(low);
    if (high !== undefined) input.max = String(high);
    input.step = node.multipleOf !== undefined ? String(node.multipleOf) : node.type === "integer" ? "1" : "any";
    if (typeof node.default === "number") input.value = String(node.default);
    input.required = required;
    return {
      el: input,
      read: async () => {
        if (input.value.trim() === "") return required ? fail("required") : undefined;
        if (!input.checkValidity()) fail(input.validationMessage || "out of range");
        const value = Number(input.value);
        if (node.exclusiveMinimum !== undefined && value <= node.exclusiveMinimum) fail(`must be over ${node.exclusiveMinimum}`);
        if (node.exclusiveMaximum !== undefined && value >= node.exclusiveMaximum) fail(`must be under ${node.exclusiveMaximum}`);
        return value === node.default ? undefined : value;
      },
    };
  }
  if (node.type === "boolean") {
    const input = document.createElement("input");
    input.type = "checkbox";
    input.checked = node.default === true;
    return { el: input, read: async () => (input.checked === (node.default ?? false) ? undefined : input.checked) };
  }
  if (node.type === "string") {
    const long = (node.maxLength ?? 10_000) >= 1000;
    const input = document.createElement(long ? "textarea" : "input");
    if (input instanceof HTMLInputElement) input.type = "text";
    if (node.maxLength !== undefined) input.maxLength = node.maxLength;
    if (typeof node.default === "string") input.value = node.default;
    input.required = required;
    input.spellcheck = long;
    return {
      el: input,
      read: async () => {
        const value = input.value;
        if (value === "") return required ? fail("required") : undefined;
        if (node.minLength !== undefined && value.length < node.minLength) fail(`at least ${node.minLength} characters`);
        return value === node.default ? undefined : value;
      },
    };
  }
  // Lists, objects, references to nested models: JSON, checked when the form is sent.
  const box = document.createElement("textarea");
  box.spellcheck = false;
  box.placeholder = node.default !== undefined ? JSON.stringify(node.default) : "JSON";
  box.dataset.kind = "json";
  return {
    el: box,
    read: async () => {
      if (box.value.trim() === "") return required ? fail("required") : undefined;
      try { return JSON.parse(box.value); } catch { return fail("not valid JSON"); }
    },
  };
}

// Renders the form of `info` into `container`; returns what reads it.
export function buildForm(container: HTMLElement, info: PipelineInfo | undefined, pipeline: string): Form {
  container.replaceChildren();
  container.dataset.pipeline = pipeline;
  const schema = info?.inputSchema ?? {};
  const required = new Set(schema.required ?? []);
  const readers: [string, Read, boolean][] = [];
  if (info?.description) {
    const p = document.createElement("p");
    p.className = "description";
    p.textContent = info.description + (info.streams ? " (shows partial output while it runs)" : "");
    container.append(p);
  }
  for (const [name, prop] of Object.entries(schema.properties ?? {})) {
    const { node, nullable } = flatten(prop);
    const { el, read } = control(name, node, required.has(name), nullable);
    el.id = `field-${name}`;
    el.dataset.field = name;
    const label = document.createElement("label");
    label.className = "field";
    label.dataset.field = name;
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = node.title ?? name;
    if (required.has(name)) {
      const mark = document.createElement("abbr");
      mark.className = "required";
      mark.title = "required";
      mark.textContent = "*";
      caption.append(mark);
    }
    label.append(caption, " ", el);
    const caps = (info?.limits ?? []).filter((l) => l.field === name)
      .map((l) => `${l.quantity.replace(/_seconds$/, "").replace(/_/g, " ")} ≤ ${l.max.toLocaleString("en")}${l.unit ? " " + l.unit : ""}`);
    const hint = [node.description?.replace(/[.;\s]+$/, ""), ...caps].filter(Boolean).join("; ");
    if (hint) {
      const small = document.createElement("small");
      small.className = "hint";
      small.textContent = hint;
      label.append(" ", small);
    }
    container.append(label);
    readers.push([name, read, Boolean(node["x-file"])]);
  }
  return {
    pipeline,
    read: async (upload) => {
      // Every other field is checked before any file is uploaded.
      const inputs: Record<string, unknown> = {};
      for (const files of [false, true]) {
        for (const [name, read, isFile] of readers) {
          if (isFile !== files) continue;
          const value = await read(upload);
          if (value !== undefined) inputs[name] = value;
        }
      }
      return inputs;
    },
  };
}
