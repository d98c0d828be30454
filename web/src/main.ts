// The web client: sign in, fill the job form (built from GET /v1/pipelines), upload the files
// through signed URLs, create the job document with the Firebase SDK, watch it with onSnapshot
// (status, progress bar), then show the result.
// The stack's (or the deployment's) settings come from /config.json.
import { initializeApp } from "firebase/app";
import {
  connectAuthEmulator, createUserWithEmailAndPassword, getAuth, onAuthStateChanged,
  signInAnonymously, signInWithEmailAndPassword, signOut, type User,
} from "firebase/auth";
import {
  collection, connectFirestoreEmulator, doc, getFirestore, limit, onSnapshot, orderBy, query,
  serverTimestamp, setDoc, updateDoc, where, type Unsubscribe,
} from "firebase/firestore";
import { buildForm, type Form, type PipelineInfo } from "./form";

interface Config {
  projectId: string;
  apiKey: string;
  authDomain?: string;
  apiUrl: string;
  bucket: string;
  jobsCollection: string;
  pipelines: string[];
  authEmulatorUrl?: string;
  firestoreEmulator?: { host: string; port: number };
}

interface JobError { code: string; message: string }
interface Job {
  uid: string;
  pipeline: string;
  status?: string;
  progress?: { fraction: number; stage: string };
  outputs?: Record<string, any>;
  error?: JobError;
  cancelRequested?: boolean;
}

const FINAL = new Set(["succeeded", "failed", "rejected", "cancelled"]);

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const show = (el: HTMLElement, visible: boolean) => { el.hidden = !visible; };

async function main(): Promise<void> {
  const config: Config = await (await fetch("config.json")).json();
  const app = initializeApp({
    apiKey: config.apiKey,
    projectId: config.projectId,
    authDomain: config.authDomain ?? `${config.projectId}.firebaseapp.com`,
  });
  const auth = getAuth(app);
  if (config.authEmulatorUrl) connectAuthEmulator(auth, config.authEmulatorUrl, { disableWarnings: true });
  const db = getFirestore(app);
  if (config.firestoreEmulator) {
    connectFirestoreEmulator(db, config.firestoreEmulator.host, config.firestoreEmulator.port);
  }

  const select = $<HTMLSelectElement>("pipeline");
  let described: Map<string, PipelineInfo> | null = null;
  let form: Form = buildForm($("fields"), undefined, "");
  select.onchange = () => { form = buildForm($("fields"), described?.get(select.value), select.value); };

  let stopJob: Unsubscribe | null = null;
  let stopList: Unsubscribe | null = null;
  let sourceUrl: string | null = null;

  const notice = (text: string) => { $("notice").textContent = text; };
  const guard = (fn: () => Promise<void>) => async () => {
    notice("");
    try { await fn(); } catch (e: any) { notice(e?.code ? `${e.code}: ${e.message}` : String(e?.message ?? e)); }
  };

  // -- the HTTP API, with the user's ID token -------------------------------------------------
  async function api(path: string, init: RequestInit = {}): Promise<any> {
    const token = await auth.currentUser!.getIdToken();
    const resp = await fetch(config.apiUrl + path, {
      ...init,
      headers: { ...(init.headers ?? {}), Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    });
    const body = await resp.json();
    if (!resp.ok) throw Object.assign(new Error(body.message), { code: body.code });
    return body;
  }

  async function upload(file: File): Promise<string> {
    const contentType = file.type || "application/octet-stream";
    const name = file.name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^[._-]+/, "") || "file";
    const slot = await api("/v1/uploads", {
      method: "POST",
      body: JSON.stringify({ name, contentType, size: file.size }),
    });
    const put = await fetch(slot.url, { method: "PUT", headers: slot.headers, body: file });
    if (!put.ok) throw new Error(`upload refused (${put.status}): ${await put.text()}`);
    return slot.uri;
  }

  // -- the job form: what each enabled pipeline takes, asked once per sign-in ------------------
  async function loadPipelines(): Promise<void> {
    if (described) return;
    const answer: { pipelines: PipelineInfo[] } = await api("/v1/pipelines");
    described = new Map(answer.pipelines.map((p) => [p.name, p]));
    select.replaceChildren(...answer.pipelines.map((p) => new Option(p.name, p.name)));
    select.onchange!(new Event("change"));
    document.body.dataset.pipelines = answer.pipelines.map((p) => p.name).join(",");
  }

  // -- one job: status, progress bar, result --------------------------------------------------
  function watch(jobId: string): void {
    stopJob?.();
    $("job-id").textContent = jobId;
    $("status").textContent = "…";
    $("stage").textContent = "";
    $("error").textContent = "";
    $<HTMLProgressElement>("progress").value = 0;
    for (const id of ["result-image", "transcript", "player"]) show($(id), false);
    let rendered = false;
    stopJob = onSnapshot(
      doc(db, config.jobsCollection, jobId),
      (snap) => {
        if (!snap.exists()) { $("status").textContent = "waiting"; return; }
        const job = snap.data() as Job;
        const status = job.status ?? "pending";
        $("status").textContent = status;
        $("stage").textContent = job.progress?.stage ?? "";
        $<HTMLProgressElement>("progress").value = status === "succeeded" ? 1 : job.progress?.fraction ?? 0;
        $("error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
        if (status === "succeeded" && !rendered) {
          rendered = true;
          guard(() => showResult(jobId, job))();
        }
      },
      (err) => {
        $("status").textContent = "unreadable";
        $("error").textContent = `${err.code}: ${err.message}`;
      },
    );
  }

  async function showResult(jobId: string, job: Job): Promise<void> {
    const outputs = job.outputs ?? {};
    if (typeof outputs.text === "string") {
      $("transcript").textContent = outputs.text;
      show($("transcript"), true);
    }
    const results = await api(`/v1/jobs/${jobId}/results`);
    const files: { name: string; url: string }[] = results.files;
    const image = files.find((f) => /\.(png|jpe?g|webp)$/i.test(f.name));
    if (image) {
      const img = $<HTMLImageElement>("result-image");
      img.src = image.url;
      await img.decode();
      show(img, true);
    }
    const audio = files.find((f) => /\.(wav|mp3|m4a|ogg|opus|flac)$/i.test(f.name));
    const player = $<HTMLAudioElement>("player");
    if (audio) player.src = audio.url;
    else if (sourceUrl && job.pipeline === "transcribe") player.src = sourceUrl;
    show(player, Boolean(player.src));
  }

  // -- my jobs, newest first, with cancel ------------------------------------------------------
  function listMine(user: User): void {
    stopList?.();
    const mine = query(
      collection(db, config.jobsCollection),
      where("uid", "==", user.uid),
      orderBy("createdAt", "desc"),
      limit(20),
    );
    stopList = onSnapshot(mine, (snap) => {
      const list = $("jobs");
      list.replaceChildren();
      for (const d of snap.docs) {
        const job = d.data() as Job;
        const status = job.status ?? "pending";
        const li = document.createElement("li");
        li.dataset.jobId = d.id;
        li.innerHTML = `<code></code> <span class="pipeline"></span> <strong class="status"></strong>`;
        li.querySelector("code")!.textContent = d.id;
        li.querySelector(".pipeline")!.textContent = job.pipeline;
        li.querySelector(".status")!.textContent = status + (job.cancelRequested && !FINAL.has(status) ? " (cancelling)" : "");
        const open = document.createElement("button");
        open.textContent = "Open";
        open.onclick = () => watch(d.id);
        li.append(open);
        if (!FINAL.has(status) && !job.cancelRequested) {
          const cancel = document.createElement("button");
          cancel.className = "cancel";
          cancel.textContent = "Cancel";
          cancel.onclick = guard(() => updateDoc(doc(db, config.jobsCollection, d.id), { cancelRequested: true }));
          li.append(cancel);
        }
        list.append(li);
      }
    }, (err) => notice(`${err.code}: ${err.message}`));
  }

  // -- wiring ----------------------------------------------------------------------------------
  const email = () => $<HTMLInputElement>("email").value;
  const password = () => $<HTMLInputElement>("password").value;
  $("signin").onclick = guard(async () => { await signInWithEmailAndPassword(auth, email(), password()); });
  $("signup").onclick = guard(async () => { await createUserWithEmailAndPassword(auth, email(), password()); });
  $("anon").onclick = guard(async () => { await signInAnonymously(auth); });
  $("signout").onclick = guard(() => signOut(auth));
  $("open").onclick = () => watch($<HTMLInputElement>("open-id").value.trim());

  $("submit").onclick = guard(async () => {
    const user = auth.currentUser!;
    const pipeline = select.value;
    if (form.pipeline !== pipeline) select.onchange!(new Event("change"));
    let advanced: Record<string, unknown>;
    try { advanced = JSON.parse($<HTMLTextAreaElement>("inputs").value.trim() || "{}"); } catch {
      throw Object.assign(new Error("the advanced inputs are not valid JSON"), { code: "invalid_inputs" });
    }
    let first = true;
    const inputs = await form.read(async (file) => {
      if (first) {  // the player plays the first file (a transcribed recording)
        first = false;
        if (sourceUrl) URL.revokeObjectURL(sourceUrl);
        sourceUrl = URL.createObjectURL(file);
      }
      return upload(file);
    });
    Object.assign(inputs, advanced);
    const ref = doc(collection(db, config.jobsCollection));
    // The rules let a user read only a job that exists and is theirs: listen once it is written.
    await setDoc(ref, { uid: user.uid, pipeline, inputs, status: "pending", createdAt: serverTimestamp() });
    watch(ref.id);
  });

  onAuthStateChanged(auth, (user) => {
    $("whoami").textContent = user ? `${user.isAnonymous ? "anonymous" : user.email} (${user.uid})` : "not signed in";
    document.body.dataset.uid = user?.uid ?? "";
    show($("signin-panel"), !user);
    show($("app-panel"), Boolean(user));
    show($("signout"), Boolean(user));
    if (user) {
      listMine(user);
      guard(loadPipelines)();
    } else { stopList?.(); stopJob?.(); }
  });
  document.body.dataset.ready = "true";
}

main().catch((e) => { $("notice").textContent = `the app could not start: ${e?.message ?? e}`; });
