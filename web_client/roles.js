// What each role is called on every page (lesson, panels, console): one list, so
// that a new role gets a name everywhere at once.

const ROLE_LABELS = {
  teacher: "Teacher",
  delegate: "School moderator",
  expert: "Guest expert",
  classroom: "Classroom",
  student: "Student",
  observer: "Observer",
  field_trip: "Field-trip camera",
};

export function roleLabel(role) {
  return ROLE_LABELS[role] ?? role;
}
