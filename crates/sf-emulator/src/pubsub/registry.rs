//! Topics and schemas: which topics exist, each one's current schema, and every schema ever
//! served (an event keeps the schema id it was published with, so old ids stay readable after a
//! field is added).
//!
//! Built from the emulator's object schema at start: one change event topic per captured object,
//! `/data/ChangeEvents`, and one `/event/Name__e` per platform event. `/__admin/pubsub/schema`
//! adds fields at run time (a new schema and id for that topic).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use orderbridge_pubsub::topics;

use super::avro::{self, EventSchema, FieldSpec, SchemaBuildError};
use crate::schema::{FieldType, Schema};

/// Most data fields a topic's schema may have: run-time additions stop here, so the admin API
/// cannot grow a schema (and the list of its versions) without bound.
pub const MAX_FIELDS: usize = 1000;

/// System fields Salesforce leaves out of change events (the id travels in the header).
const NOT_IN_CHANGE_EVENTS: [&str; 3] = ["Id", "IsDeleted", "SystemModstamp"];

/// What a topic carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    /// Change events of one object.
    Changes { object: String },
    /// `/data/ChangeEvents`: the change events of every captured object.
    AllChanges,
    /// A platform event.
    Event { name: String },
}

#[derive(Debug)]
struct Topic {
    kind: TopicKind,
    /// Data fields of the current schema.
    fields: Vec<FieldSpec>,
    /// None for `/data/ChangeEvents` (each event names its object's schema).
    current: Option<Arc<EventSchema>>,
}

/// Why a field cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum AddFieldError {
    #[error("no topic {0}")]
    UnknownTopic(String),
    #[error(
        "{0} carries the change events of several objects: add the field to one object's topic"
    )]
    NotSingle(String),
    #[error("field name {0:?}: letters, digits and underscores, starting with a letter")]
    BadName(String),
    #[error("the topic already has a field {0}")]
    Exists(String),
    #[error("the topic already has {MAX_FIELDS} fields")]
    TooMany,
    #[error(transparent)]
    Build(#[from] SchemaBuildError),
}

/// Topics and schemas.
#[derive(Debug, Default)]
pub struct Registry {
    topics: BTreeMap<String, Topic>,
    schemas: HashMap<String, Arc<EventSchema>>,
}

impl Registry {
    /// Topics for the captured objects and the platform events of `schema`.
    pub fn new(schema: &Schema, captured: &[String]) -> Result<Self, SchemaBuildError> {
        let mut reg = Self::default();
        for name in captured {
            let Some(obj) = schema.object(name) else {
                continue;
            };
            let fields = obj
                .fields
                .iter()
                .filter(|f| !NOT_IN_CHANGE_EVENTS.contains(&f.name.as_str()))
                .map(|f| FieldSpec {
                    name: f.name.clone(),
                    ty: f.ty,
                })
                .collect();
            reg.add_topic(
                topics::change_event_topic(&obj.name),
                TopicKind::Changes {
                    object: obj.name.clone(),
                },
                fields,
            )?;
        }
        reg.topics.insert(
            topics::ALL_CHANGE_EVENTS.to_owned(),
            Topic {
                kind: TopicKind::AllChanges,
                fields: Vec::new(),
                current: None,
            },
        );
        for ev in schema.platform_events() {
            let fields = ev
                .fields
                .iter()
                .map(|f| FieldSpec {
                    name: f.name.clone(),
                    ty: f.ty,
                })
                .collect();
            reg.add_topic(
                topics::platform_event_topic(&ev.name),
                TopicKind::Event {
                    name: ev.name.clone(),
                },
                fields,
            )?;
        }
        Ok(reg)
    }

    fn build(kind: &TopicKind, fields: &[FieldSpec]) -> Result<EventSchema, SchemaBuildError> {
        match kind {
            TopicKind::Changes { object } => {
                avro::change_event_schema(&topics::change_event_name(object), fields)
            }
            TopicKind::Event { name } => avro::platform_event_schema(name, fields),
            TopicKind::AllChanges => Err(SchemaBuildError::new("no single schema")),
        }
    }

    fn add_topic(
        &mut self,
        name: String,
        kind: TopicKind,
        fields: Vec<FieldSpec>,
    ) -> Result<(), SchemaBuildError> {
        let schema = Arc::new(Self::build(&kind, &fields)?);
        self.schemas.insert(schema.id.clone(), Arc::clone(&schema));
        self.topics.insert(
            name,
            Topic {
                kind,
                fields,
                current: Some(schema),
            },
        );
        Ok(())
    }

    /// The topic's kind and current schema (None for `/data/ChangeEvents`); None if no such
    /// topic. Topic names match exactly, as Salesforce's do.
    pub fn topic(&self, name: &str) -> Option<(&TopicKind, Option<Arc<EventSchema>>)> {
        self.topics.get(name).map(|t| (&t.kind, t.current.clone()))
    }

    /// Any schema served so far.
    pub fn schema(&self, id: &str) -> Option<Arc<EventSchema>> {
        self.schemas.get(id).cloned()
    }

    /// Whether `schema_id` is one of `topic`'s schemas (current or earlier).
    pub fn topic_has_schema(&self, topic: &str, schema_id: &str) -> bool {
        let Some(schema) = self.schemas.get(schema_id) else {
            return false;
        };
        self.topics.get(topic).is_some_and(|t| {
            t.current
                .as_ref()
                .is_some_and(|c| avro_name(c) == avro_name(schema))
        })
    }

    /// All topic names.
    pub fn topic_names(&self) -> impl Iterator<Item = &String> {
        self.topics.keys()
    }

    /// Adds a nullable field to a topic's schema; returns (old id, new id).
    pub fn add_field(
        &mut self,
        topic: &str,
        name: &str,
        ty: FieldType,
    ) -> Result<(String, String), AddFieldError> {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.len() <= 80
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(AddFieldError::BadName(name.to_owned()));
        }
        let t = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| AddFieldError::UnknownTopic(topic.to_owned()))?;
        if t.kind == TopicKind::AllChanges {
            return Err(AddFieldError::NotSingle(topic.to_owned()));
        }
        let reserved = ["ChangeEventHeader", "CreatedDate", "CreatedById"];
        if t.fields.iter().any(|f| f.name.eq_ignore_ascii_case(name))
            || reserved.iter().any(|r| r.eq_ignore_ascii_case(name))
        {
            return Err(AddFieldError::Exists(name.to_owned()));
        }
        if t.fields.len() >= MAX_FIELDS {
            return Err(AddFieldError::TooMany);
        }
        let mut fields = t.fields.clone();
        fields.push(FieldSpec {
            name: name.to_owned(),
            ty,
        });
        let schema = Arc::new(Self::build(&t.kind, &fields)?);
        let old = t.current.as_ref().map(|c| c.id.clone()).unwrap_or_default();
        let new = schema.id.clone();
        t.fields = fields;
        t.current = Some(Arc::clone(&schema));
        self.schemas.insert(new.clone(), schema);
        Ok((old, new))
    }
}

/// The record name of a schema (the same across its versions).
fn avro_name(s: &EventSchema) -> Option<String> {
    match &s.avro {
        apache_avro::Schema::Record(r) => Some(r.name.fullname(None)),
        _ => None,
    }
}
