//! PodDisruptionBudgets: one per set of pods, one that allows an eviction (integer and
//! percentage fields resolved as the disruption controller does), and the unhealthy-pod
//! policy. `policy/v1` and `policy/v1beta1` are both read (clusters still hold the latter).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lameduck_manifest::workload::selects;
use lameduck_manifest::{Object, Workload, WorkloadKind};

use super::{Ctx, MULTIPLE_PDBS, NO_PDB, PDB_BLOCKS_DRAINS, PDB_UNHEALTHY_BLOCKS, Place, Site};

/// A budget, typed, with its object (budgets are small; they are kept until every workload
/// has been read).
pub(crate) struct Budget {
    object: Object,
    spec: PodDisruptionBudgetSpec,
    /// Read from `policy/v1beta1`, where an empty selector selects nothing.
    beta: bool,
}

impl Budget {
    /// Reads a PodDisruptionBudget; one that does not type is noted and left out.
    pub(crate) fn read(o: &Object, notes: &mut Vec<String>) -> Option<Budget> {
        let beta = o.api_version == "policy/v1beta1";
        // k8s-openapi checks apiVersion: read a v1beta1 budget as the v1 shape it shares.
        let typed: Result<PodDisruptionBudget, _> = if beta {
            let mut v = o.value.clone();
            v["apiVersion"] = "policy/v1".into();
            serde_json::from_value(v)
        } else {
            o.typed()
        };
        match typed {
            Ok(pdb) => Some(Budget {
                object: o.clone(),
                spec: pdb.spec.unwrap_or_default(),
                beta,
            }),
            Err(e) => {
                notes.push(format!(
                    "{}:{}: {}: not a valid PodDisruptionBudget ({e}); not checked",
                    o.file.display(),
                    o.pos("").line,
                    o.display_name()
                ));
                None
            }
        }
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.spec.selector {
            // A null selector selects nothing (both versions).
            None => false,
            Some(s) => {
                let empty = s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && s.match_expressions.as_ref().is_none_or(|e| e.is_empty());
                if empty && self.beta {
                    return false;
                }
                selects(s, labels)
            }
        }
    }
}

/// The budgets of a run, indexed so that a workload only looks at the ones that can select it:
/// by namespace and the first `matchLabels` pair, plus (per namespace) those without one.
pub(crate) struct Budgets {
    all: Vec<Budget>,
    by_label: HashMap<(Option<String>, String, String), Vec<usize>>,
    unlabelled: HashMap<Option<String>, Vec<usize>>,
}

impl Budgets {
    /// Indexes `all` (in input order).
    pub(crate) fn new(all: Vec<Budget>) -> Self {
        let mut by_label: HashMap<_, Vec<usize>> = HashMap::new();
        let mut unlabelled: HashMap<_, Vec<usize>> = HashMap::new();
        for (i, b) in all.iter().enumerate() {
            let ns = b.object.namespace.clone();
            let first = b
                .spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|m| m.iter().next());
            match first {
                Some((k, v)) => by_label
                    .entry((ns, k.clone(), v.clone()))
                    .or_default()
                    .push(i),
                None => unlabelled.entry(ns).or_default().push(i),
            }
        }
        Budgets {
            all,
            by_label,
            unlabelled,
        }
    }

    /// The budgets in `ns` that select pods with `labels`, in input order.
    fn selecting(&self, ns: &Option<String>, labels: &BTreeMap<String, String>) -> Vec<&Budget> {
        let mut idx: Vec<usize> = labels
            .iter()
            .filter_map(|(k, v)| self.by_label.get(&(ns.clone(), k.clone(), v.clone())))
            .flatten()
            .chain(self.unlabelled.get(ns).into_iter().flatten())
            .copied()
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| &self.all[i])
            .filter(|b| b.selects(labels))
            .collect()
    }
}

/// What the budget checks need of a workload, kept after it is read.
pub(crate) struct Pods {
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    display: String,
    replicas: Option<i32>,
    /// Pods per replica: a LeaderWorkerSet's group size, else 1.
    per_group: i32,
    inference: bool,
    /// Where `no-pdb` points.
    name_place: Place,
}

impl Pods {
    pub(crate) fn of(w: &Workload<'_>) -> Pods {
        // A LeaderWorkerSet has `size` pods per group.
        let per_group = if w.kind == WorkloadKind::LeaderWorkerSet {
            w.object
                .value
                .pointer("/spec/leaderWorkerTemplate/size")
                .and_then(serde_json::Value::as_i64)
                .and_then(|s| i32::try_from(s).ok())
                .unwrap_or(1)
                .max(1)
        } else {
            1
        };
        Pods {
            namespace: w.object.namespace.clone(),
            labels: w.pod_labels(),
            display: w.display_name(),
            replicas: w.replicas,
            per_group,
            inference: w.model.inference(),
            name_place: Site::from(w).place("metadata.name"),
        }
    }
}

/// A percentage or count of `total`, rounded up, as the disruption controller scales both
/// `minAvailable` and `maxUnavailable`.
fn scaled_up(v: &IntOrString, total: i32) -> Option<i32> {
    match v {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => {
            let pct: f64 = s.trim().strip_suffix('%')?.trim().parse().ok()?;
            Some((f64::from(total) * pct / 100.0).ceil() as i32)
        }
    }
}

fn show(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// How many pods a budget lets be disrupted when all `total` are healthy, and the arithmetic.
fn allowed(spec: &PodDisruptionBudgetSpec, total: i32) -> Option<(i32, String)> {
    if let Some(mu) = &spec.max_unavailable {
        let n = scaled_up(mu, total)?;
        let how = match mu {
            IntOrString::String(_) => format!(
                "maxUnavailable {} of {total} pods, rounded up, is {n}",
                show(mu)
            ),
            IntOrString::Int(_) => format!("maxUnavailable: {n}"),
        };
        return Some((n.min(total), how));
    }
    let ma = spec.min_available.as_ref()?;
    let need = scaled_up(ma, total)?;
    let how = match ma {
        IntOrString::String(_) => format!(
            "minAvailable {} of {total} pods, rounded up, is {need}, which leaves {}",
            show(ma),
            total - need
        ),
        IntOrString::Int(_) => format!(
            "minAvailable: {need} with {total} pods leaves {}",
            total - need
        ),
    };
    Some((total - need, how))
}

pub(crate) fn check(ctx: &mut Ctx<'_>, w: &Pods, budgets: &Budgets, hpa_min: Option<i32>) {
    let mine = budgets.selecting(&w.namespace, &w.labels);
    if mine.len() > 1 {
        let names: Vec<String> = mine.iter().map(|b| b.object.name.clone()).collect();
        ctx.emit(
            MULTIPLE_PDBS,
            Site::object(&mine[1].object),
            "spec.selector",
            None,
            format!(
                "{} selects the pods of {} together with {}: with more than one budget the Eviction API answers every eviction with an error, and node drains hang",
                mine[1].object.display_name(),
                w.display,
                names.join(", ")
            ),
            "keep one PodDisruptionBudget per set of pods".into(),
        );
    }
    if mine.is_empty() && ctx.opts.require_pdb && w.replicas.is_some() {
        ctx.emit_at(
            NO_PDB,
            &w.name_place,
            None,
            "no PodDisruptionBudget selects these pods: a node drain may evict all of them at once"
                .into(),
            "add a PodDisruptionBudget with maxUnavailable: 1 selecting the pod template's labels"
                .into(),
        );
    }
    // The pods the budget counts: an HPA may scale down to its minReplicas.
    let per_group = w.per_group;
    let replicas = match hpa_min {
        Some(min) => min.min(w.replicas.unwrap_or(min)),
        None => w.replicas.unwrap_or(1),
    };
    let total = replicas.saturating_mul(per_group);
    let counted = if hpa_min.is_some() {
        " (the HPA's minReplicas)"
    } else {
        ""
    };
    for b in mine {
        let Some((n, how)) = allowed(&b.spec, total) else {
            continue;
        };
        let field = if b.spec.max_unavailable.is_some() {
            "spec.maxUnavailable"
        } else {
            "spec.minAvailable"
        };
        if n <= 0 {
            ctx.emit(
                PDB_BLOCKS_DRAINS,
                Site::object(&b.object),
                field,
                None,
                format!(
                    "{} allows no eviction of {}{counted}: {how} pods that may be disrupted, so every node drain waits on it forever",
                    b.object.display_name(),
                    w.display
                ),
                "allow at least one disruption (maxUnavailable: 1), and keep warm headroom so one pod's load fits on the others".into(),
            );
            continue;
        }
        let policy = b.spec.unhealthy_pod_eviction_policy.as_deref();
        if n == 1 && policy != Some("AlwaysAllow") && w.inference {
            let which = match policy {
                Some(p) => format!("unhealthyPodEvictionPolicy: {p}"),
                None => "the default unhealthyPodEvictionPolicy (IfHealthyBudget)".into(),
            };
            ctx.emit(
                PDB_UNHEALTHY_BLOCKS,
                Site::object(&b.object),
                if policy.is_some() { "spec.unhealthyPodEvictionPolicy" } else { field },
                None,
                format!(
                    "{} lets one pod of {} be disrupted ({how}) under {which}: one pod that is not ready (an engine loading its model, a crash loop, an OOM) uses the whole budget, so healthy pods cannot be evicted, and two such pods block even their own eviction: node drains hang until they recover",
                    b.object.display_name(),
                    w.display
                ),
                "set unhealthyPodEvictionPolicy: AlwaysAllow, so pods that are not ready never block a drain".into(),
            );
        }
    }
}

/// A budget that lets no pod of its workload go, and the value that lets one go.
pub struct BudgetFix {
    /// The budget's index in the objects given.
    pub object: usize,
    /// The field to change (`spec.maxUnavailable` or `spec.minAvailable`).
    pub field: &'static str,
    /// Its new value.
    pub value: serde_json::Value,
    /// What it says now, with the arithmetic.
    pub why: String,
}

/// The new value of a blocking budget's field that allows exactly one disruption of `total`
/// pods, in the field's own kind (a count stays a count, a percentage a percentage).
fn loosened(
    spec: &PodDisruptionBudgetSpec,
    total: i32,
) -> Option<(&'static str, serde_json::Value)> {
    if spec.max_unavailable.is_some() {
        return Some(("spec.maxUnavailable", serde_json::json!(1)));
    }
    let v = match spec.min_available.as_ref()? {
        IntOrString::Int(_) => serde_json::json!((total - 1).max(0)),
        // The largest whole percentage that, rounded up as the controller does, leaves one.
        IntOrString::String(_) => {
            let pct = (100 * i64::from((total - 1).max(0))) / i64::from(total.max(1));
            serde_json::json!(format!("{pct}%"))
        }
    };
    Some(("spec.minAvailable", v))
}

/// The budgets among `objects` that allow no eviction of the one workload they select
/// (counted at the HPA's minReplicas, as `pdb-blocks-drains` does). A budget that selects
/// several workloads, or shares its pods with another budget, is left to people.
pub fn budget_fixes(objects: &[Object]) -> Vec<BudgetFix> {
    let mut notes = Vec::new();
    let mut budgets = Vec::new();
    let mut index = Vec::new();
    let mut hpas = super::Hpas::default();
    for (i, o) in objects.iter().enumerate() {
        match o.kind.as_str() {
            "PodDisruptionBudget" => {
                if let Some(b) = Budget::read(o, &mut notes) {
                    budgets.push(b);
                    index.push(i);
                }
            }
            "HorizontalPodAutoscaler" => {
                if let Ok(h) = o.typed() {
                    hpas.add(o, &h);
                }
            }
            _ => {}
        }
    }
    let budgets = Budgets::new(budgets);
    // For each budget: the totals of the workloads it selects.
    let mut selected: HashMap<usize, Vec<i32>> = HashMap::new();
    let mut shared = std::collections::HashSet::new();
    for o in objects {
        let Some(Ok(w)) = Workload::all(o).into_iter().next() else {
            continue;
        };
        if w.kind.lifecycle() != lameduck_manifest::Lifecycle::Served {
            continue;
        }
        let pods = Pods::of(&w);
        let mine = budgets.selecting(&pods.namespace, &pods.labels);
        let hpa_min = hpas.min.get(&super::key(o)).copied();
        let replicas = match hpa_min {
            Some(min) => min.min(pods.replicas.unwrap_or(min)),
            None => pods.replicas.unwrap_or(1),
        };
        let total = replicas.saturating_mul(pods.per_group);
        for b in &mine {
            let at = budgets
                .all
                .iter()
                .position(|x| std::ptr::eq(x, *b))
                .unwrap_or(usize::MAX);
            selected.entry(at).or_default().push(total);
            if mine.len() > 1 {
                shared.insert(at);
            }
        }
    }
    let mut out = Vec::new();
    for (at, totals) in selected {
        let ([total], false) = (totals.as_slice(), shared.contains(&at)) else {
            continue;
        };
        let Some(b) = budgets.all.get(at) else {
            continue;
        };
        let Some((n, how)) = allowed(&b.spec, *total) else {
            continue;
        };
        if n > 0 {
            continue;
        }
        if let (Some((field, value)), Some(&object)) = (loosened(&b.spec, *total), index.get(at)) {
            out.push(BudgetFix {
                object,
                field,
                value,
                why: how,
            });
        }
    }
    out.sort_by_key(|f| f.object);
    out
}
