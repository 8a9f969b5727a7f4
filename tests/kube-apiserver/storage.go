// How each resource is stored and written: one generic registry store (etcd behind a watch
// cache) per resource, a strategy that applies the resource's defaults and validation, a
// status subresource where the resource has one, synchronous namespace deletion, and the
// admission check that the namespace of a new object exists.
package main

import (
	"context"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/admission"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/klog/v2"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// strategy is the create/update/delete strategy of one resource's main endpoint.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	res *resource
}

func newStrategy(r *resource) strategy {
	return strategy{ObjectTyper: scheme, NameGenerator: names.SimpleNameGenerator, res: r}
}

func (s strategy) NamespaceScoped() bool          { return s.res.namespaced }
func (s strategy) AllowCreateOnUpdate() bool      { return s.res.allowCreateOnUpdate }
func (s strategy) AllowUnconditionalUpdate() bool { return true }
func (s strategy) Canonicalize(runtime.Object)    {}

func (s strategy) WarningsOnCreate(context.Context, runtime.Object) []string { return nil }
func (s strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

// PrepareForCreate clears the status (where it is a subresource), starts the generation
// (where it is tracked), and fills defaults.
func (s strategy) PrepareForCreate(_ context.Context, obj runtime.Object) {
	if s.res.hasStatus {
		resetField(obj, "Status")
	}
	if s.res.tracksGeneration {
		if m, err := metaOf(obj); err == nil {
			m.SetGeneration(1)
		}
	}
	if s.res.defaults != nil {
		s.res.defaults(obj, nil)
	}
}

// PrepareForUpdate keeps the stored status (where it is a subresource), fills defaults, and
// bumps the generation (where it is tracked) when the spec changed.
func (s strategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	if s.res.hasStatus {
		copyField(obj, old, "Status")
	}
	if s.res.defaults != nil {
		s.res.defaults(obj, old)
	}
	if s.res.tracksGeneration {
		bumpGenerationOnSpecChange(obj, old)
	}
}

// Validate checks the name against the resource's naming rule (the generic server checks
// the rest of the metadata) and the resource's own rules.
func (s strategy) Validate(_ context.Context, obj runtime.Object) field.ErrorList {
	var errs field.ErrorList
	if m, err := metaOf(obj); err == nil && m.GetName() != "" {
		for _, msg := range s.res.nameRule(m.GetName(), false) {
			errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), m.GetName(), msg))
		}
	}
	if s.res.validate != nil {
		errs = append(errs, s.res.validate(obj, nil)...)
	}
	return errs
}

// ValidateUpdate checks the resource's own rules (names cannot change).
func (s strategy) ValidateUpdate(_ context.Context, obj, old runtime.Object) field.ErrorList {
	if s.res.validate != nil {
		return s.res.validate(obj, old)
	}
	return nil
}

// GetResetFields: server-side apply to the main endpoint does not own the status of
// resources that have a status subresource.
func (s strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.res.hasStatus {
		return nil
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{
		fieldpath.APIVersion(s.res.gv.String()): fieldpath.NewSet(fieldpath.MakePathOrDie("status")),
	}
}

// statusStrategy is the update strategy of a /status subresource: only the status changes.
type statusStrategy struct{ strategy }

func (s statusStrategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	copyField(obj, old, "Spec")
}

func (s statusStrategy) ValidateUpdate(context.Context, runtime.Object, runtime.Object) field.ErrorList {
	return nil
}

func (s statusStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		fieldpath.APIVersion(s.res.gv.String()): fieldpath.NewSet(fieldpath.MakePathOrDie("spec")),
	}
}

// resourceStorage is the REST storage of one resource: the generic store plus the short
// names and categories discovery shows, and an optional hook run before a delete.
type resourceStorage struct {
	*genericregistry.Store
	res *resource
	// beforeDelete runs before the object is deleted (namespaces empty themselves here).
	beforeDelete func(ctx context.Context, name string, options *metav1.DeleteOptions) error
}

func (s *resourceStorage) ShortNames() []string { return s.res.shortNames }
func (s *resourceStorage) Categories() []string { return s.res.categories }

// Delete runs beforeDelete, then deletes the object.
func (s *resourceStorage) Delete(ctx context.Context, name string, deleteValidation rest.ValidateObjectFunc, options *metav1.DeleteOptions) (runtime.Object, bool, error) {
	if s.beforeDelete != nil {
		if err := s.beforeDelete(ctx, name, options); err != nil {
			return nil, false, err
		}
	}
	return s.Store.Delete(ctx, name, deleteValidation, options)
}

// statusStorage serves the /status subresource: GET, PUT and PATCH of the whole object,
// changing only its status.
type statusStorage struct {
	store *genericregistry.Store
}

func (r *statusStorage) New() runtime.Object { return r.store.New() }
func (r *statusStorage) Destroy()            {}

func (r *statusStorage) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}

func (r *statusStorage) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, _ bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	// A status update never creates the object.
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}

func (r *statusStorage) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}

func (r *statusStorage) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	return r.store.ConvertToTable(ctx, object, tableOptions)
}

// newStorage builds the REST storage of r (and of r/status when it has one).
func newStorage(r *resource, optsGetter generic.RESTOptionsGetter) (*resourceStorage, *statusStorage, error) {
	st := newStrategy(r)
	store := &genericregistry.Store{
		NewFunc:                   r.newObj,
		NewListFunc:               r.newList,
		DefaultQualifiedResource:  r.gv.WithResource(r.plural).GroupResource(),
		SingularQualifiedResource: r.gv.WithResource(r.singular).GroupResource(),
		CreateStrategy:            st,
		UpdateStrategy:            st,
		DeleteStrategy:            st,
		ResetFieldsStrategy:       st,
		TableConvertor:            rest.NewDefaultTableConvertor(r.gv.WithResource(r.plural).GroupResource()),
	}
	options := &generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: r.selectableFields}
	if err := store.CompleteWithOptions(options); err != nil {
		return nil, nil, err
	}
	main := &resourceStorage{Store: store, res: r}
	if !r.hasStatus {
		return main, nil, nil
	}
	statusStore := *store
	statusStore.UpdateStrategy = statusStrategy{st}
	statusStore.ResetFieldsStrategy = statusStrategy{st}
	return main, &statusStorage{store: &statusStore}, nil
}

// emptyNamespaceBeforeDelete returns the namespace deletion hook: kube-apiserver marks the
// namespace Terminating and its namespace controller deletes the contents later; here the
// contents are deleted right away, then the namespace.
func emptyNamespaceBeforeDelete(namespaced []*resourceStorage) func(context.Context, string, *metav1.DeleteOptions) error {
	return func(ctx context.Context, name string, options *metav1.DeleteOptions) error {
		if options != nil && len(options.DryRun) > 0 {
			return nil
		}
		nsCtx := genericapirequest.WithNamespace(ctx, name)
		for _, s := range namespaced {
			_, err := s.Store.DeleteCollection(nsCtx, rest.ValidateAllObjectFunc, &metav1.DeleteOptions{}, &metainternalversion.ListOptions{})
			if err != nil {
				return err
			}
		}
		klog.V(2).Infof("emptied namespace %s", name)
		return nil
	}
}

// namespaceExists is the admission check kube-apiserver's NamespaceLifecycle plugin does:
// an object can only be created in a namespace that exists.
type namespaceExists struct {
	namespaces *genericregistry.Store
}

func (n *namespaceExists) Handles(op admission.Operation) bool { return op == admission.Create }

func (n *namespaceExists) Validate(ctx context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	if a.GetNamespace() == "" || a.GetSubresource() != "" || a.GetResource().GroupResource() == corev1.Resource("namespaces") {
		return nil
	}
	_, err := n.namespaces.Get(genericapirequest.WithNamespace(ctx, ""), a.GetNamespace(), &metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return apierrors.NewNotFound(corev1.Resource("namespaces"), a.GetNamespace())
	}
	return err
}

// ---- reflection helpers: the served types all have ObjectMeta, most a Spec, some a Status ----

func metaOf(obj runtime.Object) (metav1.Object, error) { return meta.Accessor(obj) }

func structField(obj runtime.Object, name string) reflect.Value {
	v := reflect.ValueOf(obj)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return reflect.Value{}
	}
	return v.Elem().FieldByName(name)
}

// copyField sets dst.name to a deep copy of src.name.
func copyField(dst, src runtime.Object, name string) {
	d, s := structField(dst, name), structField(src.DeepCopyObject(), name)
	if d.IsValid() && s.IsValid() {
		d.Set(s)
	}
}

// resetField sets obj.name to its zero value.
func resetField(obj runtime.Object, name string) {
	if f := structField(obj, name); f.IsValid() {
		f.Set(reflect.Zero(f.Type()))
	}
}

// bumpGenerationOnSpecChange increments metadata.generation when the spec changed.
func bumpGenerationOnSpecChange(obj, old runtime.Object) {
	n, o := structField(obj, "Spec"), structField(old, "Spec")
	if !n.IsValid() || !o.IsValid() || apiequality.Semantic.DeepEqual(n.Interface(), o.Interface()) {
		return
	}
	if m, err := metaOf(obj); err == nil {
		if om, err := metaOf(old); err == nil {
			m.SetGeneration(om.GetGeneration() + 1)
		}
	}
}
